"""Exceptions become HTTP errors here, once; each router chooses how they are written.

:func:`problem_of` is the single mapping from an exception to a :class:`Problem` (status,
code, message, details, headers). A shape writes a problem as a JSON body:
:func:`switchboard_body` is Switchboard's ``{"error": {code, message, request_id,
details}}``, :func:`openai_body` OpenAI's ``{"error": {message, type, param, code}}`` (the
shape OpenAI's clients parse). Which shape a router uses is its policy
(``functions.core.web.policy``); the OpenAPI document's examples are written by it too.
No stack trace or SQL reaches a client: anything unexpected is logged with the request id
and answered with a 500 that quotes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from functions.core.db.errors import as_database_error
from functions.core.errors import SwitchboardError
from functions.core.logging import get_logger

log = get_logger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def request_id_of(request: Request[Any, Any, Any]) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


class Problem(NamedTuple):
    """What went wrong, before any wire shape: the status, Switchboard's stable ``code``, a
    message a person can act on, machine-readable ``details`` (``field`` names the input at
    fault) and the headers the status calls for (Allow, Retry-After, WWW-Authenticate)."""

    status: int
    code: str
    message: str
    details: dict[str, Any] = {}  # shared, never mutated: a NamedTuple's default
    headers: dict[str, str] | None = None


ErrorShape = Callable[[Problem, "str | None"], dict[str, Any]]
"""A wire shape: the JSON body of a problem, given the request's id."""

ErrorHeaders = Callable[[Problem], "dict[str, str] | None"]
"""The headers a dialect adds to a problem's own (None: none)."""


def switchboard_body(problem: Problem, request_id: str | None) -> dict[str, Any]:
    """Switchboard's shape: ``{"error": {code, message, request_id, details}}``."""
    return {
        "error": {
            "code": problem.code,
            "message": problem.message,
            "request_id": request_id,
            "details": problem.details,
        }
    }


# The ``type`` OpenAI's API gives each status; a status not listed is an invalid request
# below 500 and a server error from 500 on.
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _OPENAI_TYPES.get(status, "invalid_request_error")


def openai_body(problem: Problem, request_id: str | None) -> dict[str, Any]:
    """OpenAI's shape: ``{"error": {message, type, param, code}}``.

    OpenAI's clients pick the exception class by status and read ``message``, ``type``,
    ``param`` and ``code`` from ``error``; the request id travels in ``x-request-id`` only,
    as OpenAI sends it. ``param`` is the input at fault (``details.field``), ``code``
    Switchboard's code.
    """
    field = problem.details.get("field")
    return {
        "error": {
            "message": problem.message,
            "type": openai_error_type(problem.status),
            "param": field if isinstance(field, str) else None,
            "code": problem.code,
        }
    }


# A conflict that passes: the same request sent again can succeed (the reply in the way
# ends, the first send with the key finishes, the view is read again).
_PASSING_CONFLICTS = frozenset(
    {
        "conversation_busy",
        "idempotent_request_in_progress",
        "idempotency_race",
        "stale_configuration_view",
        "thread_moved",
    }
)
# A server error that stays: the gateway is misconfigured, not busy or broken for a moment.
_LASTING_SERVER_ERRORS = frozenset({"llm_auth_failed", "database_not_migrated", "migration_failed"})


def retry_can_fix(problem: Problem) -> bool:
    """Whether sending the same request again may succeed: a timeout, a rate limit, a
    conflict that passes, a server error that is not a misconfiguration."""
    if problem.status in (408, 429):
        return True
    if problem.status == 409:
        return problem.code in _PASSING_CONFLICTS
    return problem.status >= 500 and problem.code not in _LASTING_SERVER_ERRORS


def openai_headers(problem: Problem) -> dict[str, str] | None:
    """``x-should-retry: false`` on an error a retry cannot fix. OpenAI's SDKs retry 408,
    409, 429 and every 5xx on their own unless the response says so (openai-python's
    ``_should_retry``): without it a reused ``Idempotency-Key`` or a history that does not
    extend the named conversation is sent three times. Errors a retry can fix carry
    nothing: the SDK's own rule retries them, after ``Retry-After``."""
    return None if retry_can_fix(problem) else {"x-should-retry": "false"}


def no_headers(problem: Problem) -> dict[str, str] | None:
    return None


def error_response(
    request: Request[Any, Any, Any], problem: Problem, shape: ErrorShape
) -> Response[dict[str, Any]]:
    """``problem`` written in ``shape``, with the headers its status calls for."""
    body = shape(problem, request_id_of(request))
    return Response(body, status_code=problem.status, headers=problem.headers)


def switchboard_problem(exc: SwitchboardError) -> Problem:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    elif exc.status_code == 503:
        headers = {"Retry-After": "1"}
    if exc.status_code == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="switchboard"'}
    if exc.headers:
        headers = {**(headers or {}), **exc.headers}
    return Problem(exc.status_code, exc.code, exc.message, exc.details, headers)


def _validation_message(exc: ValidationException) -> tuple[str, dict[str, Any]]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    fields = []
    for problem in problems:
        if isinstance(problem, dict):
            key = problem.get("key")
            text = problem.get("message", "invalid value")
            parts.append(f"{key}: {text}" if key else str(text))
            if key:
                fields.append(str(key))
    message = "; ".join(parts) or exc.detail
    details: dict[str, Any] = {"errors": problems}
    if fields:
        details["field"] = fields[0]
    return f"invalid request: {message}", details


def allowed_methods(exc: MethodNotAllowedException) -> str:
    """The ``Allow`` header: the route's methods, with HEAD wherever GET is (see context)."""
    allow = (exc.headers or {}).get("allow", "")
    methods = [method.strip() for method in allow.split(",") if method.strip()]
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    return ", ".join(sorted(methods))


def http_problem(request: Request[Any, Any, Any], exc: HTTPException) -> Problem:
    """The framework's own errors: routing (404, 405), body size (413), parameters (400)."""
    status = exc.status_code
    if isinstance(exc, ValidationException):
        message, details = _validation_message(exc)
        return Problem(400, "validation_error", message, details)
    if isinstance(exc, NotFoundException):
        return Problem(404, "not_found", f"no route for {request.method} {request.url.path}")
    if isinstance(exc, MethodNotAllowedException):
        allow = allowed_methods(exc)
        method = request.scope.get("state", {}).get("method") or request.method
        return Problem(
            405,
            "method_not_allowed",
            f"{method} is not allowed on {request.url.path}; this route allows {allow}",
            {"allowed": allow.split(", ")},
            {"Allow": allow},
        )
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        return Problem(
            413,
            "payload_too_large",
            f"the request body is larger than the {limit}-byte limit",
            {"limit_bytes": limit},
        )
    if status == 400 and "JSON" in exc.detail:
        return Problem(400, "invalid_json", f"invalid JSON body: {exc.detail}")
    return Problem(status, _STATUS_CODES.get(status, "error"), exc.detail, {}, exc.headers)


def problem_of(request: Request[Any, Any, Any], exc: Exception) -> Problem:
    """The one mapping from an exception to the error a client gets (see the module)."""
    if isinstance(exc, SwitchboardError):
        return switchboard_problem(exc)
    if isinstance(exc, HTTPException):
        return http_problem(request, exc)
    database_error = as_database_error(exc)
    if database_error is not None:
        log.error("database.unavailable", error=str(exc), path=request.url.path)
        return switchboard_problem(database_error)
    log.exception("request.unhandled_error", path=request.url.path)
    return Problem(
        500, "internal_error", "an internal error occurred; quote the request_id when reporting it"
    )
