"""Every error a client sees has one shape: ``{"error": {code, message, request_id, details}}``.

Handlers here are the single place exceptions become HTTP responses. No stack trace or SQL
reaches a client: anything unexpected is logged with the request id and answered with a
500 that quotes it.
"""

from __future__ import annotations

from typing import Any

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


def error_response(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    message: str,
    *,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body = {
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id_of(request),
            "details": details or {},
        }
    }
    return Response(body, status_code=status, headers=headers)


def handle_switchboard_error(
    request: Request[Any, Any, Any], exc: SwitchboardError
) -> Response[dict[str, Any]]:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    elif exc.status_code == 503:
        headers = {"Retry-After": "1"}
    if exc.status_code == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="switchboard"'}
    return error_response(
        request, exc.status_code, exc.code, exc.message, details=exc.details, headers=headers
    )


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


def handle_http_exception(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[dict[str, Any]]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        message, details = _validation_message(exc)
        return error_response(request, 400, "validation_error", message, details=details)
    if isinstance(exc, NotFoundException):
        return error_response(
            request, 404, "not_found", f"no route for {request.method} {request.url.path}"
        )
    if isinstance(exc, MethodNotAllowedException):
        allow = allowed_methods(exc)
        method = request.scope.get("state", {}).get("method") or request.method
        return error_response(
            request,
            405,
            "method_not_allowed",
            f"{method} is not allowed on {request.url.path}; this route allows {allow}",
            details={"allowed": allow.split(", ")},
            headers={"Allow": allow},
        )
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        return error_response(
            request,
            413,
            "payload_too_large",
            f"the request body is larger than the {limit}-byte limit",
            details={"limit_bytes": limit},
        )
    if status == 400 and "JSON" in exc.detail:
        return error_response(request, 400, "invalid_json", f"invalid JSON body: {exc.detail}")
    code = _STATUS_CODES.get(status, "error")
    return error_response(request, status, code, exc.detail, headers=exc.headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    database_error = as_database_error(exc)
    if database_error is not None:
        log.error("database.unavailable", error=str(exc), path=request.url.path)
        return handle_switchboard_error(request, database_error)
    log.exception("request.unhandled_error", path=request.url.path)
    return error_response(
        request,
        500,
        "internal_error",
        "an internal error occurred; quote the request_id when reporting it",
    )


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    SwitchboardError: handle_switchboard_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
