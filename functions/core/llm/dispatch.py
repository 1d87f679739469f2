"""Getting one chat request answered with a 2xx by some upstream, retrying only where safe.

Retries, with jittered exponential backoff, happen only when the upstream cannot have
started the work: the connection failed before the request was sent (refused, connect
timeout), or it answered 503 before any of the body was used. A retry prefers an upstream
this request has not tried yet, and goes there without waiting. Nothing is retried once a
response has been accepted, nor after a connection broke with the request already sent.

Every answer feeds the pool's passive health (:func:`health_of`): a server error counts as
a failure, like a connection that could not be made, so an engine that died behind a live
HTTP server is ejected after ``eject_after`` of them in a row; a healthy answer resets the
count.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec

from functions.core.llm.errors import (
    LLMError,
    LLMTimeoutError,
    LLMUnavailableError,
    ModelNotFoundError,
    TimeoutPhase,
)
from functions.core.llm.vllm_errors import error_for_status
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from functions.core.llm.schemas import ChatRequest
    from functions.core.llm.upstreams import Lease, Upstream, UpstreamPool

# The vLLM routes the client calls, under each upstream's base URL.
Endpoint = Literal["chat/completions", "completions", "embeddings", "tokenize"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat/completions", "completions", "embeddings", "tokenize")
# Fields the client sets itself; ``ChatRequest.extra`` cannot override them.
_OWNED_FIELDS = frozenset({"stream", "stream_options"})
_INCLUDE_USAGE = {"include_usage": True}
MAX_ERROR_BODY_BYTES = 64 * 1024

log = get_logger(__name__)


def new_upstream_request_id() -> str:
    """The id one call is known by upstream (vLLM's ``X-Request-Id``).

    Made by the gateway for each call, never the client's ``X-Request-Id``: vLLM keys its
    running requests by this id, so two tenants choosing the same id must not collide (nor
    one tenant address another's request). The client's id stays in logs and responses.
    """
    return uuid.uuid4().hex


def request_details(
    upstream: Upstream,
    request_id: str | None,
    model: str | None,
    upstream_request_id: str | None = None,
) -> dict[str, Any]:
    """What every error about one request on one upstream carries in ``details``."""
    return {
        "upstream": upstream.id,
        "upstream_url": upstream.url,
        "request_id": request_id,
        "upstream_request_id": upstream_request_id,
        "model": model,
    }


def encode_body(request: ChatRequest, *, stream: bool) -> bytes:
    """The JSON body for vLLM; streams always ask for the usage chunk. A legacy completion
    sends its ``prompt`` in place of the messages."""
    payload: dict[str, Any] = msgspec.to_builtins(request)
    if (prompt := payload.pop("completion_prompt", None)) is not None:
        del payload["messages"]
        payload["prompt"] = prompt
    extra: dict[str, Any] = payload.pop("extra", {})
    for key, value in extra.items():
        if key not in payload and key not in _OWNED_FIELDS:
            payload[key] = value
    payload["stream"] = stream
    if stream:
        # A door may ask for more (``continuous_usage_stats``), never for less than usage.
        asked = extra.get("stream_options")
        payload["stream_options"] = (
            {**asked, **_INCLUDE_USAGE} if isinstance(asked, dict) else _INCLUDE_USAGE
        )
    return msgspec.json.encode(payload)


def health_of(status: int) -> bool | None:
    """What an answer's status says of the upstream's health: False for a server error (a
    dead engine behind a live vLLM server answers every chat 500), True for any other
    answer (a 4xx is the request's fault, and so is vLLM's 501, a feature it lacks), None
    for 503: vLLM's "try again later", retried at once, a busy server and not a broken one.
    """
    if status == 503:
        return None
    return status < 500 or status == 501


class _RetryableError(Exception):
    """An attempt failed in a way a retry may fix; ``error`` is what to raise otherwise."""

    def __init__(self, error: LLMError) -> None:
        super().__init__(error.message)
        self.error = error


class Dispatcher:
    """Sends chat requests through one ``httpx.AsyncClient`` to the pool's upstreams."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        pool: UpstreamPool,
        *,
        connect_timeout_s: float,
        max_retries: int,
        backoff_s: float,
        backoff_max_s: float,
        auth_headers: dict[str, str],
    ) -> None:
        self._http = http
        self._pool = pool
        self._connect_s = connect_timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._auth = auth_headers
        # Per request, so a caller's own httpx client needs no special configuration.
        self.timeout = httpx.Timeout(
            connect=connect_timeout_s, pool=connect_timeout_s, read=None, write=None
        )
        # Parsed once: httpx's URL parsing is a visible share of a request's CPU cost.
        self._urls: dict[Endpoint, dict[Upstream, httpx.URL]] = {
            endpoint: {u: httpx.URL(_endpoint_url(u.base_url, endpoint)) for u in pool.upstreams}
            for endpoint in ENDPOINTS
        }

    def _headers(self, upstream_request_id: str, *, stream: bool) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            # Compressed SSE would be buffered by the decompressor; vLLM does not compress.
            "Accept-Encoding": "identity",
            "Accept": "text/event-stream" if stream else "application/json",
            **self._auth,
            "X-Request-Id": upstream_request_id,
        }

    async def open(
        self,
        request: ChatRequest,
        *,
        request_id: str | None,
        upstream_request_id: str,
        stream: bool,
        deadline: float,
        phase: TimeoutPhase,
    ) -> tuple[Lease, httpx.Response]:
        """Send the request until an upstream answers 2xx; return that response and its lease.

        ``request_id`` is the caller's (for errors and logs); ``upstream_request_id`` is what
        the upstream is told, the same for every attempt of this call. ``deadline``
        (event-loop time) bounds everything up to the response headers, and ``phase`` names
        it if it fires. The caller must close the response and release the lease.
        """
        return await self.open_body(
            encode_body(request, stream=stream),
            model=request.model,
            endpoint="chat/completions" if request.completion_prompt is None else "completions",
            request_id=request_id,
            upstream_request_id=upstream_request_id,
            stream=stream,
            deadline=deadline,
            phase=phase,
        )

    async def open_body(
        self,
        body: bytes,
        *,
        model: str | None,
        endpoint: Endpoint,
        request_id: str | None,
        upstream_request_id: str,
        stream: bool,
        deadline: float,
        phase: TimeoutPhase,
    ) -> tuple[Lease, httpx.Response]:
        """:meth:`open` for a body already encoded, to ``endpoint`` of an upstream serving
        ``model`` (``embeddings``: only the upstreams named as embedding servers)."""
        headers = self._headers(upstream_request_id, stream=stream)
        urls = self._urls[endpoint]
        embeddings = endpoint == "embeddings"
        tried: list[Upstream] = []
        attempt = 0
        while True:
            lease = self._pool.acquire(model, avoid=tried, embeddings=embeddings)
            upstream = lease.upstream
            details = request_details(upstream, request_id, model, upstream_request_id)
            try:
                if upstream in tried:
                    await asyncio.sleep(self._backoff(attempt, deadline))
                response = await self._send(
                    upstream=upstream,
                    url=urls[upstream],
                    body=body,
                    headers=headers,
                    deadline=deadline,
                    phase=phase,
                    details=details,
                )
            except _RetryableError as exc:
                self._pool.release(lease)
                if attempt >= self._max_retries or asyncio.get_running_loop().time() >= deadline:
                    raise exc.error from exc.__cause__
                attempt += 1
                self._pool.retries_total += 1
                tried.append(upstream)
                log.info(
                    "llm_retry",
                    upstream=upstream.id,
                    attempt=attempt,
                    reason=exc.error.code,
                    request_id=request_id,
                    upstream_request_id=upstream_request_id,
                )
                continue
            except BaseException:
                self._pool.release(lease)
                raise
            return lease, response

    async def _send(
        self,
        *,
        upstream: Upstream,
        url: httpx.URL,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
        phase: TimeoutPhase,
        details: dict[str, Any],
    ) -> httpx.Response:
        """One attempt on one upstream; raises :class:`_RetryableError` when safe to retry."""
        http_request = self._http.build_request(
            "POST", url, content=body, headers=headers, timeout=self.timeout
        )
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._sent(http_request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _RetryableError(self._connect_failed(upstream, exc, details)) from exc
        except TimeoutError:
            what = "first token" if phase == "first_token" else "answer"
            raise LLMTimeoutError(
                f"no {what} from {upstream.id} in time", phase=phase, details=details
            ) from None
        except httpx.HTTPError as exc:
            # The request may have reached vLLM, so this must not be retried.
            raise LLMError(
                f"the connection to {upstream.id} broke before an answer: {type(exc).__name__}",
                details=details,
            ) from exc
        healthy = health_of(response.status_code)
        if healthy:
            self._pool.record_response(upstream)
        elif healthy is False and self._pool.record_failure(upstream):
            self._ejected(upstream, f"HTTP {response.status_code}")
        if 200 <= response.status_code < 300:
            return response
        error_body = await _read_error_body(response, deadline)
        error = error_for_status(
            response.status_code, error_body, details=details, model=details["model"]
        )
        if response.status_code == 503:
            # vLLM answers 503 before doing any work, so trying again is safe.
            raise _RetryableError(error)
        if isinstance(error, ModelNotFoundError):
            self._pool.forget_model(upstream, details["model"])
        raise error

    async def _sent(self, request: httpx.Request) -> httpx.Response:
        """``send(request, stream=True)`` without the layers of httpx's client this one never
        uses (auth flows, redirects, cookies), a tenth of a send's CPU: the request hooks,
        the transport the client would choose, the response hooks. httpx is pinned below
        0.29 for ``_transport_for_url`` (pyproject.toml); the tests' fault hooks run here."""
        hooks = self._http.event_hooks
        for hook in hooks["request"]:
            await hook(request)
        transport = self._http._transport_for_url(request.url)
        response = await transport.handle_async_request(request)
        for hook in hooks["response"]:
            await hook(response)
        return response

    def _connect_failed(
        self, upstream: Upstream, exc: httpx.HTTPError, details: dict[str, Any]
    ) -> LLMError:
        if self._pool.record_connect_failure(upstream):
            self._ejected(upstream, type(exc).__name__)
        if isinstance(exc, httpx.ConnectTimeout):
            return LLMTimeoutError(
                f"connecting to {upstream.id} timed out after {self._connect_s}s",
                phase="connect",
                details=details,
            )
        return LLMUnavailableError(f"cannot connect to {upstream.id}", details=details)

    def _ejected(self, upstream: Upstream, reason: str) -> None:
        log.warning(
            "llm_upstream_ejected",
            upstream=upstream.id,
            failures=upstream.consecutive_failures,
            reason=reason,
        )

    def _backoff(self, attempt: int, deadline: float) -> float:
        ceiling = min(self._backoff_max_s, self._backoff_s * 2 ** (attempt - 1))
        # Jitter spreads out clients that failed together; this is not a security use.
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311
        return max(0.0, min(delay, deadline - asyncio.get_running_loop().time()))


async def _read_error_body(response: httpx.Response, deadline: float) -> bytes:
    """Up to :data:`MAX_ERROR_BODY_BYTES` of an error body; what was read if it breaks."""
    data = bytearray()
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) >= MAX_ERROR_BODY_BYTES:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass
    finally:
        await response.aclose()
    return bytes(data[:MAX_ERROR_BODY_BYTES])


def _endpoint_url(base_url: str, endpoint: Endpoint) -> str:
    """Where ``endpoint`` is on an upstream: under its base URL (``.../v1``), but vLLM
    serves ``/tokenize`` at its root."""
    if endpoint == "tokenize":
        root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        return f"{root}/tokenize"
    return f"{base_url}/{endpoint}"
