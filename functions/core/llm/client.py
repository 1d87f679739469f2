"""``LLMClient``: the one way Switchboard talks to vLLM.

HTTP functions, Prefect flows, notebooks and the CLI share it. It routes each request to an
upstream (``upstreams.py``, ``model_lists.py``), sends it over one shared
``httpx.AsyncClient`` with safe retries (``dispatch.py``), reads the answer
(``streaming.py``, ``wire.py``) and turns every failure into a typed error (``errors.py``).

Timeouts, each from its setting: ``connect`` (TCP connect, retried), ``first_token`` (from
the call to the first streamed choice), ``between_tokens`` (upstream silence while a stream
is read; time the consumer spends between events does not count) and ``total`` (the whole
call, retries included). A non-streaming call has no tokens to watch: connect and total.

Each kind of call has two faces over one path: ``stream_chat`` and ``stream_raw`` share one
stream reader (the raw face adds each event's bytes), ``chat`` is ``chat_raw`` without the
body bytes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Self

import httpx
import msgspec
import structlog

from functions.core.llm.dispatch import Dispatcher, new_upstream_request_id, request_details
from functions.core.llm.errors import LLMError, LLMTimeoutError
from functions.core.llm.model_lists import ModelLists
from functions.core.llm.probes import probe_upstream
from functions.core.llm.schemas import (
    ChatDelta,
    ChatDone,
    ChatMessage,
    ChatRequest,
    ChatResult,
    LLMStats,
    ModelInfo,
    RawCompletion,
    RawEmbedding,
    RawStreamEvent,
    StreamEvent,
    UpstreamHealth,
)
from functions.core.llm.streaming import (
    ChatStreamReader,
    StreamTimeouts,
    ToolCallParts,
    upstream_event,
)
from functions.core.llm.transport import build_http_client
from functions.core.llm.upstreams import UpstreamPool
from functions.core.llm.vllm_errors import error_for_event
from functions.core.llm.wire import completion_decoder, embedding_decoder
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from types import TracebackType

    from functions.core.llm.schemas import UpstreamEvent, Usage
    from functions.core.llm.upstreams import Lease
    from functions.core.settings import Settings

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
        self._first_token_s = settings.llm_first_token_timeout_s
        self._token_s = settings.llm_token_timeout_s
        self._total_s = settings.llm_total_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._pool = UpstreamPool(
            settings.llm_urls,
            max_in_flight=settings.llm_max_inflight_per_upstream,
            eject_after=settings.llm_eject_after_failures,
            cooldown_s=settings.llm_eject_cooldown_s,
            models_ttl_s=models_ttl_s,
            embedding_urls=settings.embedding_urls,
        )
        auth = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        self._dispatcher = Dispatcher(
            http,
            self._pool,
            connect_timeout_s=settings.llm_connect_timeout_s,
            max_retries=settings.llm_max_retries,
            backoff_s=retry_backoff_s,
            backoff_max_s=retry_backoff_max_s,
            auth_headers=auth,
        )
        self._models = ModelLists(
            http,
            self._pool,
            auth_headers=auth,
            timeout=self._dispatcher.timeout,
            fetch_timeout_s=probe_timeout_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        """A client with its own pooled ``httpx.AsyncClient`` (see ``transport.py``)."""
        return cls(build_http_client(settings), settings, owns_http=True)

    async def aclose(self) -> None:
        """Stop background refreshes and close the HTTP client if this client built it."""
        self._models.close()
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
        results = await asyncio.gather(*(self._models.fetch(u) for u in upstreams))
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

    async def require_model(self, model: str, *, embeddings: bool = False) -> None:
        """Raise as a send would when no upstream serves ``model``
        (:class:`ModelNotServedError`, naming the served models in
        ``details["known_models"]``, or :class:`LLMUnavailableError` when no model list
        can be read), fetching the lists first if they must be; nothing is sent."""
        await self._models.prepare(model)
        self._pool.serving(model, embeddings=embeddings)

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
                    model_list=self._models.fetch(u),
                )
                for u in self._pool.upstreams
            )
        )
        for upstream, result in zip(self._pool.upstreams, results, strict=True):
            upstream.queue_depth = result.num_requests_waiting
            upstream.running = result.num_requests_running
        return results

    async def _read_whole(
        self,
        lease: Lease,
        response: httpx.Response,
        deadline: float,
        details: dict[str, Any],
        *,
        what: str,
    ) -> bytes:
        """A non-streamed answer's whole body (``what`` names it in errors) by the total
        deadline; the response is closed and the upstream's slot freed however it ends."""
        upstream = lease.upstream
        try:
            async with asyncio.timeout_at(deadline):
                return await response.aread()
        except TimeoutError:
            raise LLMTimeoutError(
                f"no complete {what} from {upstream.id} within {self._total_s}s",
                phase="total",
                details=details,
            ) from None
        except httpx.HTTPError as exc:
            raise LLMError(
                f"the connection to {upstream.id} broke while reading the {what}", details=details
            ) from exc
        finally:
            await response.aclose()
            self._pool.release(lease)

    async def count_prompt_tokens(
        self, model: str, messages: list[ChatMessage], *, timeout_s: float
    ) -> int:
        """The tokens ``messages`` make as ``model``'s prompt, counted by an upstream that
        serves it (vLLM's ``/tokenize``, with the chat template and generation prompt the
        completion would use). Raises a subclass of :class:`LLMError` (``timeout_s`` bounds
        the whole call)."""
        upstream_request_id = new_upstream_request_id()
        deadline = asyncio.get_running_loop().time() + timeout_s
        await self._models.prepare(model)
        body = msgspec.json.encode(
            {"model": model, "messages": messages, "add_generation_prompt": True}
        )
        lease, response = await self._dispatcher.open_body(
            body,
            model=model,
            endpoint="tokenize",
            request_id=None,
            upstream_request_id=upstream_request_id,
            stream=False,
            deadline=deadline,
            phase="total",
        )
        details = request_details(lease.upstream, None, model, upstream_request_id)
        answer = await self._read_whole(lease, response, deadline, details, what="token count")
        try:
            return msgspec.json.decode(answer, type=_TokenCount).count
        except msgspec.DecodeError as exc:
            raise LLMError(
                f"unreadable token count from {lease.upstream.id}", details=details
            ) from exc

    # -- chat ---------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, request_id: str | None = None) -> ChatResult:
        """One non-streaming completion. Raises a subclass of :class:`LLMError`."""
        return (await self.chat_raw(request, request_id=request_id)).result

    async def chat_raw(
        self, request: ChatRequest, *, request_id: str | None = None
    ) -> RawCompletion:
        """One non-streaming completion: the upstream's body byte for byte, and its reading.

        For a caller that forwards vLLM's answer as is; the timeouts, retries, routing and
        errors are those of :meth:`chat` (an error body is never returned, it is raised).
        """
        request_id = _request_id(request_id)
        upstream_request_id = new_upstream_request_id()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._total_s
        await self._models.prepare(request.model)
        lease, response = await self._dispatcher.open(
            request,
            request_id=request_id,
            upstream_request_id=upstream_request_id,
            stream=False,
            deadline=deadline,
            phase="total",
        )
        upstream = lease.upstream
        details = request_details(upstream, request_id, request.model, upstream_request_id)
        body = await self._read_whole(lease, response, deadline, details, what="answer")
        try:
            completion = completion_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise LLMError(f"unreadable answer from {upstream.id}", details=details) from exc
        if completion.error is not None:
            raise error_for_event(completion.error, details=details, partial_text="")
        if not completion.choices:
            raise LLMError(f"answer from {upstream.id} has no choices", details=details)
        choice = completion.choices[0]
        result = ChatResult(
            content=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=completion.usage,
            model=completion.model or request.model or "",
            upstream_id=upstream.id,
            upstream_url=upstream.url,
            latency_ms=round((loop.time() - started) * 1000, 3),
            request_id=request_id,
            upstream_request_id=upstream_request_id,
            response_id=completion.id,
            tool_calls=choice.message.tool_calls or None,
        )
        return RawCompletion(body=body, result=result)

    async def embed_raw(
        self,
        body: dict[str, Any],
        *,
        model: str,
        request_id: str | None = None,
    ) -> RawEmbedding:
        """One ``/v1/embeddings`` call on an embedding server serving ``model``
        (``SWITCHBOARD_EMBEDDING_URLS``): ``body`` is sent as given (its ``model`` set),
        the answer returned byte for byte with the usage read from it.

        Routing, retries, the connect and total timeouts and the errors are those of
        :meth:`chat_raw`; a generating model is a :class:`ModelKindError` before anything
        is sent.
        """
        request_id = _request_id(request_id)
        upstream_request_id = new_upstream_request_id()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._total_s
        await self._models.prepare(model)
        lease, response = await self._dispatcher.open_body(
            msgspec.json.encode({**body, "model": model}),
            model=model,
            endpoint="embeddings",
            request_id=request_id,
            upstream_request_id=upstream_request_id,
            stream=False,
            deadline=deadline,
            phase="total",
        )
        upstream = lease.upstream
        details = request_details(upstream, request_id, model, upstream_request_id)
        answer = await self._read_whole(lease, response, deadline, details, what="embeddings")
        try:
            read = embedding_decoder.decode(answer)
        except msgspec.DecodeError as exc:
            raise LLMError(f"unreadable embeddings from {upstream.id}", details=details) from exc
        if read.error is not None:
            raise error_for_event(read.error, details=details, partial_text="")
        return RawEmbedding(
            body=answer,
            usage=read.usage,
            model=read.model or model,
            upstream_id=upstream.id,
            upstream_url=upstream.url,
            latency_ms=round((loop.time() - started) * 1000, 3),
            upstream_request_id=upstream_request_id,
        )

    async def collect_chat(
        self,
        request: ChatRequest,
        *,
        request_id: str | None = None,
        into: list[str] | None = None,
        tool_calls: ToolCallParts | None = None,
        events: list[UpstreamEvent] | None = None,
        counted: list[Usage] | None = None,
    ) -> ChatResult:
        """A whole completion, read from the upstream as a stream.

        What :meth:`chat` returns, with the streaming timeouts: a hung model fails at the
        first-token timeout (not the total one) and ``ttft_ms`` is real. The text is
        gathered inside the reader's loop, with no event per token for the caller to
        handle. Cancelling the caller closes the connection, as with :meth:`stream_chat`;
        ``into`` (a list the caller holds) keeps the text that arrived before that, and
        ``tool_calls`` (likewise) the tool calls.

        ``events`` (a caller that answers from vLLM's own chunks, the OpenAI door's
        non-streamed answer): each SSE event as :meth:`stream_raw` would yield it, gathered
        here instead of passed up one by one. ``counted``: the latest usage the upstream
        reported (on every chunk with ``continuous_usage_stats``), kept through a cut.
        """
        parts: list[str] = [] if into is None else into
        call = await self._open_stream(request, request_id, parts=parts, tool_calls=tool_calls)
        reader = call.reader
        try:
            while not reader.finished:
                read = await reader.read()  # the reader gathers the text into ``parts``
                if events is not None:
                    events += map(upstream_event, reader.payloads, read)
                if counted is not None and reader.usage is not None:
                    counted[:] = (reader.usage,)
            done = call.finish()
            await reader.drain()
        finally:
            await call.aclose()
        return ChatResult(
            content="".join(parts),
            finish_reason=done.finish_reason,
            usage=done.usage,
            model=done.model,
            upstream_id=done.upstream_id,
            upstream_url=done.upstream_url,
            latency_ms=done.latency_ms,
            ttft_ms=done.ttft_ms,
            request_id=done.request_id,
            upstream_request_id=done.upstream_request_id,
            response_id=done.response_id,
            tool_calls=done.tool_calls,
        )

    async def stream_chat(
        self,
        request: ChatRequest,
        *,
        request_id: str | None = None,
        tool_calls: ToolCallParts | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream a completion: :class:`ChatDelta` events, then exactly one :class:`ChatDone`.

        Errors (subclasses of :class:`LLMError`) are raised from the iteration; those after
        text was produced carry it in ``partial_text``. Stopping early (``aclose()``, or
        cancelling the consuming task) closes the upstream connection at once, which makes
        vLLM abort the generation; wrap the call in ``contextlib.aclosing`` to make that
        immediate rather than left to garbage collection.

        Tool calls are not events: they are merged as they arrive into ``tool_calls`` (a
        :class:`ToolCallParts` the caller may hold, to keep them if the stream is cut) and
        given whole in :attr:`ChatDone.tool_calls`.
        """
        call = await self._open_stream(request, request_id, tool_calls=tool_calls)
        reader = call.reader
        try:
            while not reader.finished:
                # What arrived together is passed on together: one delta per read, not
                # per token. A model that streams slowly gives a read (and a delta) per
                # token; a burst (a fast model, or this process busy while the socket
                # filled) costs every layer above one event instead of one per token.
                texts = [
                    text
                    for event in await reader.read()
                    for choice in event.choices
                    if (text := choice.delta.content or choice.text)
                ]
                if texts:
                    yield ChatDelta(text=texts[0] if len(texts) == 1 else "".join(texts))
            yield call.finish()
            await reader.drain()
        finally:
            await call.aclose()

    async def stream_raw(
        self,
        request: ChatRequest,
        *,
        request_id: str | None = None,
        into: list[str] | None = None,
        tool_calls: ToolCallParts | None = None,
    ) -> AsyncGenerator[RawStreamEvent, None]:
        """Stream a completion as the upstream sent it, for a caller that passes it on.

        Yields one :class:`UpstreamEvent` per SSE event (``raw`` is its ``data:`` payload,
        byte for byte; the other fields are what was read from it), then exactly one
        :class:`ChatDone` in place of vLLM's ``[DONE]`` marker, with the same summary
        :meth:`stream_chat` gives. The request always asks for the usage chunk, so it
        arrives as an event with ``usage_only`` set; a caller whose own client did not ask
        for usage drops it.

        Timeouts, retries (only before any output), errors and cancellation are those of
        :meth:`stream_chat`: an ``error`` event is raised, not yielded, as the typed
        :class:`LLMError` with the text so far in ``partial_text``. ``into`` and
        ``tool_calls`` (the caller's) gather the text and tool calls as they arrive, as
        :meth:`collect_chat`'s do, for a caller that records the reply it passes on.
        """
        call = await self._open_stream(request, request_id, parts=into, tool_calls=tool_calls)
        reader = call.reader
        try:
            while not reader.finished:
                events = await reader.read()
                for raw, event in zip(reader.payloads, events, strict=True):
                    yield upstream_event(raw, event)
            yield call.finish()
            await reader.drain()
        finally:
            await call.aclose()

    async def _open_stream(
        self,
        request: ChatRequest,
        request_id: str | None,
        *,
        parts: list[str] | None = None,
        tool_calls: ToolCallParts | None = None,
    ) -> _StreamCall:
        """Send a streaming request and return it once an upstream has accepted it."""
        request_id = _request_id(request_id)
        upstream_request_id = new_upstream_request_id()
        loop = asyncio.get_running_loop()
        timeouts = StreamTimeouts(
            started=loop.time(),
            first_token_s=self._first_token_s,
            token_s=self._token_s,
            total_s=self._total_s,
        )
        await self._models.prepare(request.model)
        first_token_deadline = timeouts.started + min(self._first_token_s, self._total_s)
        lease, response = await self._dispatcher.open(
            request,
            request_id=request_id,
            upstream_request_id=upstream_request_id,
            stream=True,
            deadline=first_token_deadline,
            phase="first_token" if self._first_token_s < self._total_s else "total",
        )
        upstream = lease.upstream
        reader = ChatStreamReader(
            response,
            timeouts=timeouts,
            upstream_id=upstream.id,
            details=request_details(upstream, request_id, request.model, upstream_request_id),
            model=request.model or "",
            parts=parts,
            tool_calls=tool_calls,
        )
        return _StreamCall(
            self._pool,
            lease,
            response,
            reader,
            request_id=request_id,
            upstream_request_id=upstream_request_id,
        )


class _StreamCall:
    """One accepted streaming request: its upstream slot, response and reader.

    Whoever opened it must :meth:`aclose` it, however the stream ends.
    """

    __slots__ = (
        "_lease",
        "_pool",
        "_released",
        "_response",
        "reader",
        "request_id",
        "upstream_request_id",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        lease: Lease,
        response: httpx.Response,
        reader: ChatStreamReader,
        *,
        request_id: str | None,
        upstream_request_id: str,
    ) -> None:
        self._pool = pool
        self._lease = lease
        self._response = response
        self._released = False
        self.reader = reader
        self.request_id = request_id
        self.upstream_request_id = upstream_request_id

    def finish(self) -> ChatDone:
        """The summary of a finished stream; frees the upstream slot first.

        Called before the end of the body is drained, so the consumer sees the end at once.
        """
        self._release()
        reader = self.reader
        upstream = self._lease.upstream
        return ChatDone(
            finish_reason=reader.finish_reason,
            usage=reader.usage,
            model=reader.model,
            upstream_id=upstream.id,
            upstream_url=upstream.url,
            ttft_ms=reader.ttft_ms,
            latency_ms=reader.elapsed_ms(),
            request_id=self.request_id,
            upstream_request_id=self.upstream_request_id,
            response_id=reader.response_id,
            tool_calls=reader.tool_calls.calls(),
        )

    async def aclose(self) -> None:
        """Close the connection (vLLM aborts an unfinished generation) and free the slot."""
        try:
            await self.reader.aclose()
            await self._response.aclose()
        finally:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._lease)


def _request_id(explicit: str | None) -> str | None:
    """The caller's request id: for errors and logs only, never sent upstream (see
    :func:`~functions.core.llm.dispatch.new_upstream_request_id`)."""
    if explicit is not None:
        return explicit
    bound = structlog.contextvars.get_contextvars().get("request_id")
    return str(bound) if bound is not None else None


class _TokenCount(msgspec.Struct):
    """What vLLM's ``/tokenize`` answers, as far as a count needs."""

    count: int
