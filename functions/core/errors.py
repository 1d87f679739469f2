"""One exception hierarchy for everything Switchboard raises on purpose.

Each error carries the HTTP status and the stable machine-readable ``code`` it maps to, so
the web layer (``functions.core.web``) can turn any of them into the one JSON error shape
without a table of special cases. Services, the CLI and flows raise these; nothing else
should need to know about HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SwitchboardError(Exception):
    """Base class: a failure with a status, a code and a message a person can act on."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        # When retrying makes sense, how soon (sent as Retry-After).
        self.retry_after_s = retry_after_s
        # Response headers a door adds to the error's own (where its exchange was stored).
        self.headers = headers


class InvalidInputError(SwitchboardError):
    status_code = 400
    code = "validation_error"


class InvalidJsonError(InvalidInputError):
    """The body is not JSON Switchboard can read: truncated, not UTF-8, a number out of range,
    a lone surrogate, nested too deeply, or missing where the route needs one."""

    code = "invalid_json"


class AuthenticationError(SwitchboardError):
    status_code = 401
    code = "unauthorized"


class PermissionDeniedError(SwitchboardError):
    status_code = 403
    code = "forbidden"


class ModelNotAllowedError(PermissionDeniedError):
    """The key may not use this configuration or model (``api_key.allowed_*``)."""

    code = "model_not_allowed"


class NotFoundError(SwitchboardError):
    status_code = 404
    code = "not_found"


class ConflictError(SwitchboardError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(SwitchboardError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(SwitchboardError):
    status_code = 415
    code = "unsupported_media_type"


class DatabaseUnavailableError(SwitchboardError):
    status_code = 503
    code = "database_unavailable"
