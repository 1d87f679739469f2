"""vLLM's error bodies: the nested OpenAI shape, the pre-0.10.1 flat shape, and the odd ones."""

from __future__ import annotations

import msgspec

# Bodies that are not the OpenAI error object: FastAPI defaults, the auth middleware, the
# elastic-EP middleware. Built once; they never change.
NOT_FOUND = b'{"detail":"Not Found"}'
METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
UNAUTHORIZED = b'{"error":"Unauthorized"}'
SCALING = b'{"error":"The model is currently scaling. Please try again later."}'

ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class ApiError(Exception):
    """An error answered as vLLM's JSON error object with ``status`` as its ``code``."""

    def __init__(
        self, status: int, error_type: str, message: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.param = param


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A failed sampling-parameter or length check (vLLM's ``BadRequestError``)."""
    return ApiError(400, "BadRequestError", message, param)


def invalid_request(message: str, param: str | None = None) -> ApiError:
    """A body that does not parse or validate; vLLM names the type after the HTTP phrase."""
    return ApiError(400, "Bad Request", message, param)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", "model")


def engine_dead() -> ApiError:
    return ApiError(500, "InternalServerError", ENGINE_DEAD_MESSAGE)


class _ErrorInfo(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: int


class _Legacy(msgspec.Struct):
    object: str
    message: str
    type: str
    param: str | None
    code: int


_encode = msgspec.json.encode


def error_object(error: ApiError, *, legacy: bool) -> bytes:
    """The inner error object, in the shape of the configured vLLM version."""
    if legacy:
        return _encode(_Legacy("error", error.message, error.error_type, error.param, error.status))
    return _encode(_ErrorInfo(error.message, error.error_type, error.param, error.status))


def error_body(error: ApiError, *, legacy: bool) -> bytes:
    """The JSON body of an error response."""
    inner = error_object(error, legacy=legacy)
    return inner if legacy else b'{"error":' + inner + b"}"


def stream_error_event(error: ApiError, *, legacy: bool) -> bytes:
    """A mid-stream error: one SSE event, always wrapped as ``{"error": {...}}``.

    vLLM <= 0.10.0 put the flat object inside and always called it a 400 BadRequestError.
    """
    if legacy:
        error = ApiError(400, "BadRequestError", error.message, error.param)
    return b'data: {"error":' + error_object(error, legacy=legacy) + b"}\n\n"
