"""``LLMClient``: the one way Switchboard talks to vLLM.

HTTP functions, Prefect flows, notebooks and the CLI share it. It routes each request to an
upstream (``upstreams.py``), sends it over one shared ``httpx.AsyncClient``, parses the
answer (``sse.py``, ``wire.py``) and turns every failure into a typed error (``errors.py``).

Timeouts, each from its setting: ``connect`` (TCP connect, retried), ``first_token`` (from
the call to the first streamed choice), ``between_tokens`` (upstream silence while a stream
is read; time the consumer spends between events does not count) and ``total`` (the whole
call, retries included). A non-streaming call has no tokens to watch: connect and total.

Retries, with jittered exponential backoff, only when the upstream cannot have started
the work: the connection failed before the request was sent, or it answered 503 before any
of the body was read. A retry prefers an upstream this call has not tried yet, and goes
there without waiting. Nothing is retried once a response has been accepted.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Self

import httpx
import msgspec
import structlog

from functions.core.llm.errors import (
    LLMError,
    LLMTimeoutError,
    LLMUnavailableError,
    ModelNotFoundError,
    TimeoutPhase,
)
from functions.core.llm.probes import probe_upstream
from functions.core.llm.schemas import (
    ChatDelta,
    ChatDone,
    ChatRequest,
    ChatResult,
    LLMStats,
    ModelInfo,
    StreamEvent,
    UpstreamHealth,
)
from functions.core.llm.streaming import ChatStreamReader, StreamTimeouts
from functions.core.llm.transport import build_http_client
from functions.core.llm.upstreams import Lease, Upstream, UpstreamPool
from functions.core.llm.vllm_errors import error_for_event, error_for_status
from functions.core.llm.wire import ModelCard, completion_decoder, model_list_decoder
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from types import TracebackType

    from functions.core.settings import Settings

# Fields the client sets itself; ``ChatRequest.extra`` cannot override them.
_OWNED_FIELDS = frozenset({"stream", "stream_options"})
_INCLUDE_USAGE = {"include_usage": True}
MAX_ERROR_BODY_BYTES = 64 * 1024
# A new model name triggers at most one blocking model-list refresh per this interval.
FORCED_REFRESH_INTERVAL_S = 1.0

log = get_logger(__name__)


class LLMClient:
    """Async client for a pool of vLLM servers (OpenAI-compatible API).

    Build it with :meth:`from_settings`, or pass an ``httpx.AsyncClient`` of your own
    (tests do); only a client built here is closed by :meth:`aclose`. Use it as an async
    context manager or call :meth:`aclose` when done.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: Settings,
        *,
        owns_http: bool = False,
        retry_backoff_s: float = 0.05,
        retry_backoff_max_s: float = 1.0,
        models_ttl_s: float = 30.0,
        probe_timeout_s: float = 5.0,
    ) -> None:
        self._http = http
        self._owns_http = owns_http
        self._connect_s = settings.llm_connect_timeout_s
        self._first_token_s = settings.llm_first_token_timeout_s
        self._token_s = settings.llm_token_timeout_s
        self._total_s = settings.llm_total_timeout_s
        self._max_retries = settings.llm_max_retries
        self._backoff_s = retry_backoff_s
        self._backoff_max_s = retry_backoff_max_s
        self._probe_timeout_s = probe_timeout_s
        self._pool = UpstreamPool(
            settings.llm_urls,
            max_in_flight=settings.llm_max_inflight_per_upstream,
            eject_after=settings.llm_eject_after_failures,
            cooldown_s=settings.llm_eject_cooldown_s,
            models_ttl_s=models_ttl_s,
        )
        # Per request, so a caller's own httpx client needs no special configuration.
        self._timeout = httpx.Timeout(
            connect=self._connect_s, pool=self._connect_s, read=None, write=None
        )
        self._auth: dict[str, str] = (
            {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        )
        # Parsed once: httpx's URL parsing is a visible share of a request's CPU cost.
        self._chat_urls = {
            u: httpx.URL(f"{u.base_url}/chat/completions") for u in self._pool.upstreams
        }
        self._refresh_task: asyncio.Task[None] | None = None
        self._last_forced_refresh = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        """A client with its own pooled ``httpx.AsyncClient`` (see ``transport.py``)."""
        return cls(build_http_client(settings), settings, owns_http=True)

    async def aclose(self) -> None:
        """Stop background refreshes and close the HTTP client if this client built it."""
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_task.cancel()
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- pool control -------------------------------------------------------------------

    def mark_down(self, url: str) -> None:
        """Take the upstream (base URL, root URL or id) out of rotation until :meth:`mark_up`.

        Raises ``KeyError`` for a URL that is not one of the configured upstreams.
        """
        if changed := self._pool.mark_down(url):
            log.warning("llm_upstream_marked_down", upstream=changed.id)

    def mark_up(self, url: str) -> None:
        """Put the upstream back into rotation and clear its passive-health failures."""
        if changed := self._pool.mark_up(url):
            log.info("llm_upstream_marked_up", upstream=changed.id)

    def apply_health(self, results: list[UpstreamHealth]) -> None:
        """Mark each probed upstream up or down by its ``/health`` answer."""
        for result in results:
            if result.healthy:
                self.mark_up(result.id)
            else:
                self.mark_down(result.id)

    def stats(self) -> LLMStats:
        """In-flight counts, caps, states and counters of every upstream, for metrics."""
        return self._pool.stats()

    # -- models and health --------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        """Every model served by a reachable upstream, with the upstreams that serve it.

        Also refreshes the routing tables. Raises the first upstream's error when none
        could be read.
        """
        upstreams = [u for u in self._pool.upstreams if not u.manual_down]
        results = await asyncio.gather(*(self._fetch_models(u) for u in upstreams))
        merged: dict[str, ModelInfo] = {}
        for upstream, result in zip(upstreams, results, strict=True):
            if isinstance(result, LLMError):
                continue
            for card in result:
                info = merged.get(card.id)
                if info is None:
                    merged[card.id] = ModelInfo(
                        id=card.id,
                        owned_by=card.owned_by,
                        root=card.root,
                        parent=card.parent,
                        max_model_len=card.max_model_len,
                        upstreams=[upstream.id],
                    )
                else:
                    info.upstreams.append(upstream.id)
        if not merged:
            failures = [r for r in results if isinstance(r, LLMError)]
            if failures:
                raise failures[0]
        return list(merged.values())

    async def health(self) -> list[UpstreamHealth]:
        """Probe every upstream (``/health``, ``/v1/models``, ``/metrics``, ``/version``).

        Never raises for an upstream's failure. Refreshes model lists and the queue gauges
        shown by :meth:`stats`; it does not change routing (feed :meth:`apply_health`).
        """
        results = await asyncio.gather(
            *(
                probe_upstream(
                    self._http,
                    u,
                    timeout_s=self._probe_timeout_s,
                    model_list=self._fetch_models(u),
                )
                for u in self._pool.upstreams
            )
        )
        for upstream, result in zip(self._pool.upstreams, results, strict=True):
            upstream.queue_depth = result.num_requests_waiting
            upstream.running = result.num_requests_running
        return results

    async def _fetch_models(self, upstream: Upstream) -> list[ModelCard] | LLMError:
        details = {"upstream": upstream.id, "upstream_url": upstream.url}
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                response = await self._http.get(
                    f"{upstream.base_url}/models", headers=self._auth, timeout=self._timeout
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            self._pool.models_failed(upstream)
            return LLMUnavailableError(
                f"cannot read the model list of {upstream.id}: {type(exc).__name__}",
                details=details,
            )
        if response.status_code != 200:
            self._pool.models_failed(upstream)
            return error_for_status(
                response.status_code, response.content, details=details, model=None
            )
        try:
            cards = model_list_decoder.decode(response.content).data
        except msgspec.DecodeError:
            self._pool.models_failed(upstream)
            return LLMError(f"unreadable model list from {upstream.id}", details=details)
        self._pool.set_models(upstream, (card.id for card in cards))
        return cards

    async def _refresh_models(self, upstreams: list[Upstream]) -> None:
        await asyncio.gather(*(self._fetch_models(u) for u in upstreams))

    def _start_refresh(self, upstreams: list[Upstream]) -> asyncio.Task[None]:
        # One refresh at a time: a burst of requests shares it instead of stampeding.
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(self._refresh_models(upstreams))
        return self._refresh_task

    async def _prepare_routing(self, model: str | None) -> None:
        """Make sure the model lists can route ``model``, fetching only when they must.

        A known model never waits: stale lists refresh in the background. An unknown one
        waits for a refresh of the lists that are due, or, at most once per
        :data:`FORCED_REFRESH_INTERVAL_S`, of all of them (a model may have been added).
        """
        if model is None:
            return
        due = self._pool.models_due()
        if self._pool.is_known(model):
            if due:
                self._start_refresh(due)
            return
        running = self._refresh_task is not None and not self._refresh_task.done()
        if not running and not due:
            now = asyncio.get_running_loop().time()
            if now - self._last_forced_refresh < FORCED_REFRESH_INTERVAL_S:
                return
            self._last_forced_refresh = now
            due = [u for u in self._pool.upstreams if not u.manual_down]
        # Shielded: a caller that goes away must not cancel a refresh others wait on.
        await asyncio.shield(self._start_refresh(due))

    # -- chat ---------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, request_id: str | None = None) -> ChatResult:
        """One non-streaming completion. Raises a subclass of :class:`LLMError`."""
        request_id = _request_id(request_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._total_s
        await self._prepare_routing(request.model)
        lease, response = await self._open(
            request, request_id=request_id, stream=False, deadline=deadline, phase="total"
        )
        upstream = lease.upstream
        details = _details(upstream, request_id, request.model)
        try:
            async with asyncio.timeout_at(deadline):
                body = await response.aread()
        except TimeoutError:
            raise LLMTimeoutError(
                f"no complete answer from {upstream.id} within {self._total_s}s",
                phase="total",
                details=details,
            ) from None
        except httpx.HTTPError as exc:
            raise LLMError(
                f"the connection to {upstream.id} broke while reading the answer", details=details
            ) from exc
        finally:
            await response.aclose()
            self._pool.release(lease)
        try:
            completion = completion_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise LLMError(f"unreadable answer from {upstream.id}", details=details) from exc
        if completion.error is not None:
            raise error_for_event(completion.error, details=details, partial_text="")
        if not completion.choices:
            raise LLMError(f"answer from {upstream.id} has no choices", details=details)
        choice = completion.choices[0]
        return ChatResult(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=completion.usage,
            model=completion.model or request.model or "",
            upstream_id=upstream.id,
            upstream_url=upstream.url,
            latency_ms=round((loop.time() - started) * 1000, 3),
            request_id=request_id,
        )

    async def stream_chat(
        self, request: ChatRequest, *, request_id: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream a completion: :class:`ChatDelta` events, then exactly one :class:`ChatDone`.

        Errors (subclasses of :class:`LLMError`) are raised from the iteration; those after
        text was produced carry it in ``partial_text``. Stopping early (``aclose()``, or
        cancelling the consuming task) closes the upstream connection at once, which makes
        vLLM abort the generation; wrap the call in ``contextlib.aclosing`` to make that
        immediate rather than left to garbage collection.
        """
        request_id = _request_id(request_id)
        loop = asyncio.get_running_loop()
        timeouts = StreamTimeouts(
            started=loop.time(),
            first_token_s=self._first_token_s,
            token_s=self._token_s,
            total_s=self._total_s,
        )
        await self._prepare_routing(request.model)
        first_token_deadline = timeouts.started + min(self._first_token_s, self._total_s)
        lease, response = await self._open(
            request,
            request_id=request_id,
            stream=True,
            deadline=first_token_deadline,
            phase="first_token" if self._first_token_s < self._total_s else "total",
        )
        upstream = lease.upstream
        reader = ChatStreamReader(
            response,
            timeouts=timeouts,
            upstream_id=upstream.id,
            details=_details(upstream, request_id, request.model),
            model=request.model or "",
        )
        released = False
        try:
            while not reader.finished:
                for text in await reader.read():
                    yield ChatDelta(text=text)
            # The upstream is done: free its slot before the consumer sees the end.
            released = True
            self._pool.release(lease)
            yield ChatDone(
                finish_reason=reader.finish_reason,
                usage=reader.usage,
                model=reader.model,
                upstream_id=upstream.id,
                upstream_url=upstream.url,
                ttft_ms=reader.ttft_ms,
                latency_ms=round((loop.time() - timeouts.started) * 1000, 3),
                request_id=request_id,
            )
            await reader.drain()
        finally:
            await reader.aclose()
            await response.aclose()
            if not released:
                self._pool.release(lease)

    # -- sending --------------------------------------------------------------------------

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        payload: dict[str, Any] = msgspec.to_builtins(request)
        extra: dict[str, Any] = payload.pop("extra", {})
        for key, value in extra.items():
            if key not in payload and key not in _OWNED_FIELDS:
                payload[key] = value
        payload["stream"] = stream
        if stream:
            payload["stream_options"] = _INCLUDE_USAGE
        return msgspec.json.encode(payload)

    def _headers(self, request_id: str | None, *, stream: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            # Compressed SSE would be buffered by the decompressor; vLLM does not compress.
            "Accept-Encoding": "identity",
            "Accept": "text/event-stream" if stream else "application/json",
            **self._auth,
        }
        if request_id:
            headers["X-Request-Id"] = request_id
        return headers

    async def _open(
        self,
        request: ChatRequest,
        *,
        request_id: str | None,
        stream: bool,
        deadline: float,
        phase: TimeoutPhase,
    ) -> tuple[Lease, httpx.Response]:
        """Send the request, retrying where safe; return a 200 response with its lease.

        The caller must close the response and release the lease.
        """
        body = self._body(request, stream=stream)
        headers = self._headers(request_id, stream=stream)
        tried: list[Upstream] = []
        attempt = 0
        while True:
            lease = self._pool.acquire(request.model, avoid=tried)
            upstream = lease.upstream
            details = _details(upstream, request_id, request.model)
            try:
                if upstream in tried:
                    await asyncio.sleep(self._backoff(attempt, deadline))
                response = await self._send(
                    upstream=upstream,
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
        body: bytes,
        headers: dict[str, str],
        deadline: float,
        phase: TimeoutPhase,
        details: dict[str, Any],
    ) -> httpx.Response:
        """One attempt on one upstream; raises :class:`_RetryableError` when safe to retry."""
        http_request = self._http.build_request(
            "POST",
            self._chat_urls[upstream],
            content=body,
            headers=headers,
            timeout=self._timeout,
        )
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._http.send(http_request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if self._pool.record_connect_failure(upstream):
                log.warning(
                    "llm_upstream_ejected",
                    upstream=upstream.id,
                    failures=upstream.consecutive_failures,
                )
            error: LLMError
            if isinstance(exc, httpx.ConnectTimeout):
                error = LLMTimeoutError(
                    f"connecting to {upstream.id} timed out after {self._connect_s}s",
                    phase="connect",
                    details=details,
                )
            else:
                error = LLMUnavailableError(f"cannot connect to {upstream.id}", details=details)
            raise _RetryableError(error) from exc
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
        self._pool.record_response(upstream)
        if 200 <= response.status_code < 300:
            return response
        if response.status_code == 503:
            # Nothing of the body has been read yet: vLLM did no work, a retry is safe.
            error_body = await _read_error_body(response, deadline)
            raise _RetryableError(
                error_for_status(503, error_body, details=details, model=details["model"])
            )
        error_body = await _read_error_body(response, deadline)
        error = error_for_status(
            response.status_code, error_body, details=details, model=details["model"]
        )
        if isinstance(error, ModelNotFoundError):
            self._pool.forget_model(upstream, details["model"])
        raise error

    def _backoff(self, attempt: int, deadline: float) -> float:
        ceiling = min(self._backoff_max_s, self._backoff_s * 2 ** (attempt - 1))
        # Jitter spreads out clients that failed together; this is not a security use.
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311
        return max(0.0, min(delay, deadline - asyncio.get_running_loop().time()))


class _RetryableError(Exception):
    """Internal: an attempt failed in a way a retry may fix; ``error`` is what to raise."""

    def __init__(self, error: LLMError) -> None:
        super().__init__(error.message)
        self.error = error


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


def _request_id(explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit
    bound = structlog.contextvars.get_contextvars().get("request_id")
    return str(bound) if bound is not None else None


def _details(upstream: Upstream, request_id: str | None, model: str | None) -> dict[str, Any]:
    return {
        "upstream": upstream.id,
        "upstream_url": upstream.url,
        "request_id": request_id,
        "model": model,
    }
