"""Reading one vLLM chat stream: SSE bytes in, parsed events out, timeouts enforced.

One reader serves every streaming call: ``stream_chat`` takes the text from the parsed
events, ``stream_raw`` pairs each with its payload bytes (:func:`upstream_event`); each event
is decoded once, and nothing is built per event that a caller did not ask for.

Each read waits under one deadline: until the first choice arrives it is the first-token
deadline (fixed from the start of the call), afterwards "now + between-token timeout",
taken at the moment of the read so a slow consumer is never blamed on the upstream; the
total deadline caps both. Every event is checked for an ``error`` key, which vLLM uses for
failures after the 200 was sent.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import httpx
import msgspec

from functions.core.llm.errors import LLMError, LLMTimeoutError, TimeoutPhase
from functions.core.llm.schemas import UpstreamEvent
from functions.core.llm.sse import SSEDecoder, SSEProtocolError
from functions.core.llm.transport import READ_CHUNK
from functions.core.llm.vllm_errors import error_for_event
from functions.core.llm.wire import StreamChunk, stream_chunk_decoder

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

    from functions.core.llm.schemas import Usage

_DONE = b"[DONE]"
# After [DONE] only the end of the chunked body is left; never wait long for it.
MAX_DRAIN_S = 1.0


class ToolCallParts:
    """A reply's tool calls as their stream deltas arrive, merged by ``index``.

    vLLM sends a call's ``id``, ``type`` and ``function.name`` once, in its first delta,
    then its ``function.arguments`` in fragments (the shape of ``DeltaToolCall``). A caller
    that may be cut short holds its own instance, so the calls received so far (their
    arguments possibly unfinished) survive an error or a cancellation.
    """

    __slots__ = ("_arguments", "_calls")

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}
        self._arguments: dict[int, list[str]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        """Merge one chunk's ``delta.tool_calls``."""
        for delta in deltas:
            index = delta.get("index", 0)
            function = delta.get("function") or {}
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = {
                    "id": delta.get("id"),
                    "type": delta.get("type") or "function",
                    "function": {"name": function.get("name") or "", "arguments": ""},
                }
                self._arguments[index] = []
            else:
                # Sent once by vLLM; taken from a later delta only if the first lacked it.
                if call["id"] is None and delta.get("id"):
                    call["id"] = delta["id"]
                if not call["function"]["name"] and function.get("name"):
                    call["function"]["name"] = function["name"]
            if arguments := function.get("arguments"):
                self._arguments[index].append(arguments)

    def calls(self) -> list[dict[str, Any]] | None:
        """The calls so far in index order, OpenAI's message shape; None when there are none."""
        if not self._calls:
            return None
        merged: list[dict[str, Any]] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            function = {**call["function"], "arguments": "".join(self._arguments[index])}
            merged.append({**call, "function": function})
        return merged


class StreamTimeouts(msgspec.Struct, frozen=True):
    """The stream's limits in seconds; ``started`` is the event-loop time of the call."""

    started: float
    first_token_s: float
    token_s: float
    total_s: float


class ChatStreamReader:
    """Turns one streaming response into parsed events and the final stream facts.

    After :meth:`read` has returned with :attr:`finished` set, ``finish_reason``, ``usage``,
    ``model``, ``response_id`` and ``ttft_ms`` are final, :attr:`text` is the whole
    answer and :attr:`tool_calls` its tool calls. Every choice's deltas are read as one
    reply: a caller that asks for several choices (the OpenAI door's ``n``) gathers each
    from the events by their ``index`` instead, and hands no ``parts``/``tool_calls``.
    Errors are raised as :class:`LLMError` subclasses carrying the text received so far.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        timeouts: StreamTimeouts,
        upstream_id: str,
        details: dict[str, Any],
        model: str,
        parts: list[str] | None = None,
        tool_calls: ToolCallParts | None = None,
    ) -> None:
        # One call per chunk: the transport's own reader when it has one (see
        # ``transport.READ_CHUNK``), else httpx's raw iterator.
        self._raw: AsyncGenerator[bytes, None] | None = None
        read_chunk: Callable[[], Awaitable[bytes]] | None = response.extensions.get(READ_CHUNK)
        if read_chunk is None:
            self._raw = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
            read_chunk = _chunk_reader(self._raw)
        self._read_chunk = read_chunk
        self._timeouts = timeouts
        self._total_deadline = timeouts.started + timeouts.total_s
        self._loop = asyncio.get_running_loop()
        self._decoder = SSEDecoder()
        self._upstream_id = upstream_id
        self._details = details
        # The text as it arrives; a caller may hand its own list to hold it.
        self._parts: list[str] = [] if parts is None else parts
        # The tool calls as they arrive; likewise a caller's own, to keep them on a cut.
        self.tool_calls = ToolCallParts() if tool_calls is None else tool_calls
        self.payloads: list[bytes] = []
        self.model = model
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.ttft_ms: float | None = None
        self.finished = False
        # An error found after some text in the same chunk: raised on the next read, so the
        # consumer gets that text first.
        self._pending: LLMError | None = None

    @property
    def text(self) -> str:
        """Everything generated so far."""
        return "".join(self._parts)

    def elapsed_ms(self) -> float:
        """Milliseconds since the call started."""
        return round((self._loop.time() - self._timeouts.started) * 1000, 3)

    async def read(self) -> list[StreamChunk]:
        """Wait for more of the stream; return the events it completed (possibly none).

        :attr:`payloads` then holds those events' ``data`` bytes, in the same order. The
        ``[DONE]`` marker is not returned: it sets :attr:`finished`.
        """
        if self._pending is not None:
            raise self._pending
        phase, deadline = self._deadline()
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await self._read_chunk()
        except TimeoutError:
            raise LLMTimeoutError(
                self._timeout_message(phase),
                phase=phase,
                details=self._details,
                partial_text=self.text,
            ) from None
        except httpx.HTTPError as exc:
            raise self._error(f"the connection to {self._upstream_id} broke mid-stream") from exc
        if not chunk:  # the end of the body
            events = self._handle(self._decoder.flush())
            if not self.finished and self._pending is None:
                self._end_without_done()
            return events
        try:
            payloads = self._decoder.feed(chunk)
        except SSEProtocolError as exc:
            raise self._error(str(exc)) from exc
        return self._handle(payloads)

    def _deadline(self) -> tuple[TimeoutPhase, float]:
        phase: TimeoutPhase
        if self.ttft_ms is None:
            phase = "first_token"
            deadline = self._timeouts.started + self._timeouts.first_token_s
        else:
            phase, deadline = "between_tokens", self._loop.time() + self._timeouts.token_s
        if self._total_deadline <= deadline:
            return "total", self._total_deadline
        return phase, deadline

    def _handle(self, payloads: list[bytes]) -> list[StreamChunk]:
        # Once per token on every send: locals, and the per-stream facts kept out of the
        # per-choice loop.
        self.payloads = payloads
        events: list[StreamChunk] = []
        decode = stream_chunk_decoder.decode
        keep = self._parts.append
        add_calls = self.tool_calls.add
        for data in payloads:
            if data == _DONE:
                self.finished = True
                break
            try:
                event = decode(data)
            except msgspec.DecodeError as exc:
                error = self._error(f"unreadable stream event from {self._upstream_id}")
                error.__cause__ = exc
                return self._fail(events, error)
            if event.error is not None:
                error = error_for_event(event.error, details=self._details, partial_text=self.text)
                return self._fail(events, error)
            if event.usage is not None:
                self.usage = event.usage
            for choice in event.choices:
                if choice.finish_reason is not None:
                    self.finish_reason = choice.finish_reason
                delta = choice.delta
                if text := delta.content or choice.text:
                    keep(text)
                if delta.tool_calls:
                    add_calls(delta.tool_calls)
            events.append(event)
        if events:
            self._note_stream_facts(events)
        return self._cut(events)

    def _note_stream_facts(self, events: list[StreamChunk]) -> None:
        if self.response_id is None:
            self.response_id = next((event.id for event in events if event.id), None)
        for event in reversed(events):  # the latest model named (usually the last event)
            if event.model:
                self.model = event.model
                break
        # Every event of one read arrived at the same moment.
        if self.ttft_ms is None and any(event.choices for event in events):
            self.ttft_ms = self.elapsed_ms()

    def _cut(self, events: list[StreamChunk]) -> list[StreamChunk]:
        # Keep payloads paired with the events returned; what follows [DONE] or an error
        # event is not part of the answer.
        if len(self.payloads) != len(events):
            self.payloads = self.payloads[: len(events)]
        return events

    def _fail(self, events: list[StreamChunk], error: LLMError) -> list[StreamChunk]:
        if not events:
            raise error
        self._note_stream_facts(events)
        self._pending = error
        return self._cut(events)

    def _end_without_done(self) -> None:
        # A stream cut after the finish chunk still holds the whole answer (maybe no usage).
        if self.finish_reason is None:
            raise self._error(f"the stream from {self._upstream_id} ended before the answer did")
        self.finished = True

    def _error(self, message: str) -> LLMError:
        return LLMError(message, details=self._details, partial_text=self.text)

    def _timeout_message(self, phase: TimeoutPhase) -> str:
        if phase == "first_token":
            return f"no first token from {self._upstream_id} within {self._timeouts.first_token_s}s"
        if phase == "between_tokens":
            return f"{self._upstream_id} went silent for {self._timeouts.token_s}s mid-stream"
        return f"the answer from {self._upstream_id} took longer than {self._timeouts.total_s}s"

    async def drain(self) -> None:
        """Read the end of the body after ``[DONE]`` so the connection can be reused."""
        try:
            async with asyncio.timeout(min(self._timeouts.token_s, MAX_DRAIN_S)):
                while await self._read_chunk():
                    pass
        except (TimeoutError, httpx.HTTPError):
            return

    async def aclose(self) -> None:
        """Stop iterating the body (the caller closes the response itself)."""
        if self._raw is not None:
            await self._raw.aclose()


def _chunk_reader(chunks: AsyncIterator[bytes]) -> Callable[[], Awaitable[bytes]]:
    """``read_chunk`` over an iterator of chunks: the next non-empty one, ``b""`` at the end."""

    async def read_chunk() -> bytes:
        async for chunk in chunks:
            if chunk:
                return chunk
        return b""

    return read_chunk


def upstream_event(raw: bytes, chunk: StreamChunk) -> UpstreamEvent:
    """The :class:`UpstreamEvent` for one event :meth:`ChatStreamReader.read` returned.

    vLLM sends one choice per chunk, so only the first is read; its ``index`` says which
    of ``n`` it is (a caller asking for several gathers each by it). A legacy
    completion's text (``choice.text``) reads as content.
    """
    if not chunk.choices:
        return UpstreamEvent(raw=raw, usage=chunk.usage, usage_only=chunk.usage is not None)
    choice = chunk.choices[0]
    delta = choice.delta
    return UpstreamEvent(
        raw=raw,
        text=delta.content or choice.text or "",
        tool_calls=delta.tool_calls,
        finish_reason=choice.finish_reason,
        usage=chunk.usage,
        reasoning=delta.reasoning if delta.reasoning is not None else delta.reasoning_content,
        index=choice.index,
    )
