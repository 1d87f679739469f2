"""Per-request context: a request id, one canonical log line, HTTP metrics.

A raw ASGI wrapper around the whole Litestar handler (not a Litestar middleware, which only
runs for matched routes), so 404s and 405s get a request id and a log line too.

The canonical line (event ``request``) carries the function, method, path, route template,
status, duration, request id, the caller's key prefix and name, and what the layers below
noted (``functions.core.logging.note_request``): conversation, model, configuration,
upstream, tokens, TTFT, the LLM's time and the gateway's overhead (the rest). Prompt and
reply text appear on it only with ``SWITCHBOARD_LOG_MESSAGE_TEXT=true``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from functions.core.logging import (
    RequestFacts,
    collecting_request_facts,
    get_logger,
    log_fields,
)
from functions.core.metrics import (
    GATEWAY_OVERHEAD,
    HTTP_DURATION,
    HTTP_IN_FLIGHT,
    HTTP_REQUESTS,
    KEY_REPLIES,
    KEY_TOKENS,
    child,
    flush_soon,
)

if TYPE_CHECKING:
    from functions.core.runtime import Runtime

log = get_logger("switchboard.access")
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

ASGIApp = Any


def _incoming_request_id(scope: dict[str, Any]) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _route_template(scope: dict[str, Any]) -> str:
    handler = scope.get("route_handler")
    if handler is None:
        return "unmatched"
    template = scope.get("path_template")
    if isinstance(template, str):
        return template
    paths = getattr(handler, "paths", None)
    return str(next(iter(paths))) if paths else "unmatched"


def _logs_message_text(scope: dict[str, Any]) -> bool:
    app = scope.get("litestar_app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    return bool(getattr(settings, "log_message_text", False))


def _with_allow(headers: Any, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """An OPTIONS answer's ``Allow``: every method of the path, not of one handler.

    Litestar's automatic OPTIONS handler lists only the methods of the first handler
    registered on a path; the methods of every route with the path's template are the truth
    (plus HEAD wherever GET is, see above).
    """
    app = scope.get("litestar_app")
    template = scope.get("path_template")
    if app is None or not isinstance(template, str):
        return list(headers)
    methods: set[str] = set()
    for route in app.routes:
        if getattr(route, "path_format", None) == template:
            methods.update(getattr(route, "methods", ()))
    if "GET" in methods:
        methods.add("HEAD")
    allow = ", ".join(sorted(methods)).encode()
    return [(k, v) for k, v in headers if k.lower() != b"allow"] + [(b"allow", allow)]


class RequestContext:
    """Wraps an ASGI app: binds ``request_id``, echoes it, logs and counts each request."""

    def __init__(
        self, app: ASGIApp, function: str, *, key_names: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.function = function
        self.in_flight = HTTP_IN_FLIGHT.labels(function)
        # The keys whose usage is labelled by name (SWITCHBOARD_METRICS_KEY_NAMES).
        self.key_names = key_names

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = time.perf_counter()
        head = scope["method"] == "HEAD"
        # HEAD is GET without the body (RFC 9110) on every GET route: the app sees a GET;
        # the server keeps the original scope, so it also knows to send no body.
        inner = {**scope, "method": "GET"} if head else scope
        if head:
            state["method"] = "HEAD"

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if scope["method"] == "OPTIONS" and status == 204:
                    headers = _with_allow(headers, inner)
                message["headers"] = [*headers, header, *facts.headers]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        self.in_flight.inc()
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id),
            collecting_request_facts() as facts,
        ):
            try:
                await self.app(inner, receive, send_with_id)
            finally:
                self.in_flight.dec()
                elapsed = time.perf_counter() - started
                route = _route_template(inner)
                method = scope["method"]
                child(HTTP_REQUESTS, self.function, method, route, str(status)).inc()
                child(HTTP_DURATION, self.function, method, route).observe(elapsed)
                overhead = self._overhead(facts, route, elapsed)
                self._count_usage(state, facts)
                flush_soon()
                if scope["path"] not in _QUIET_PATHS or status >= 400:
                    self._log(
                        inner, facts, route=route, status=status, elapsed=elapsed, overhead=overhead
                    )

    def _count_usage(self, state: dict[str, Any], facts: RequestFacts) -> None:
        """A send's reply in the per-key usage metrics (nothing for other requests)."""
        fields = facts.fields
        status = fields.get("reply_status")
        if status is None:
            return
        name = state.get("principal_name")
        key = name if name in self.key_names else "other"
        config = str(fields.get("config") or "none")
        child(KEY_REPLIES, key, config, str(status)).inc()
        for kind in ("prompt", "completion"):
            tokens = fields.get(f"{kind}_tokens")
            if isinstance(tokens, int) and tokens > 0:
                child(KEY_TOKENS, key, config, kind).inc(tokens)

    def _overhead(self, facts: RequestFacts, route: str, elapsed: float) -> float | None:
        """Time outside the upstream call, for a request whose reply completed."""
        llm_ms = facts.fields.get("llm_ms")
        if llm_ms is None or facts.fields.get("reply_status") != "complete":
            return None
        overhead = max(0.0, elapsed - float(llm_ms) / 1000)
        child(GATEWAY_OVERHEAD, self.function, route).observe(overhead)
        return overhead

    def _log(
        self,
        scope: dict[str, Any],
        facts: RequestFacts,
        *,
        route: str,
        status: int,
        elapsed: float,
        overhead: float | None,
    ) -> None:
        state = scope["state"]
        fields: dict[str, Any] = {
            "function": self.function,
            "method": state.get("method", scope["method"]),
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "key_prefix": state.get("key_prefix"),
            "principal": state.get("principal_name"),
        }
        conversation_id = scope.get("path_params", {}).get("conversation_id")
        if conversation_id is not None:
            fields["conversation_id"] = str(conversation_id)
        fields.update(facts.fields)
        if overhead is not None:
            fields["overhead_ms"] = round(overhead * 1000, 3)
        if facts.prompt_text is not None and _logs_message_text(scope):
            fields["prompt_text"] = facts.prompt_text
            fields["reply_text"] = facts.reply_text
        log_fields(log, "request", fields)


class OnRuntime:
    """Wraps an ASGI app: runs each request on the app's runtime (its engine, its key cache).

    The server starts each request in a task of its own, which does not inherit what the
    lifespan bound; and two apps in one process (each with its runtime) must each keep to
    their own. The lifespan sets :attr:`runtime` once it is open.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.runtime: Runtime | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        runtime = self.runtime
        if runtime is None:
            await self.app(scope, receive, send)
            return
        unbind = runtime.bind()
        try:
            await self.app(scope, receive, send)
        finally:
            unbind()
