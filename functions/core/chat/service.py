"""Sending: store first, call the model, record how it ended — for every door.

:class:`ChatService` is the one send path. A door (the chat function, the OpenAI door,
evaluation, replay) describes its send as a :class:`SendRequest`; the service claims the
exchange (``exchanges``: ownership, configuration, the turns and a pending reply committed
before vLLM is called, the prompt), calls the model and ends the reply through a
``ReplyRecorder``, whose write a cancellation cannot interrupt. One lock per conversation
in this process makes concurrent sends wait in order instead of polling the database.
Around each exchange, ``admit`` (before the claim) and ``reconcile`` (after the record)
are called once (``hooks``: where quotas reserve and refund). The in-flight guard around
the model's call is what a shutdown drains and a deletion aborts, for every door alike.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

from functions.core.chat.choices import ChoicesRecorder, further_choice_ids
from functions.core.chat.exchanges import Exchanges, conversation_hold, upstream_request
from functions.core.chat.hooks import Admission, ExchangeHooks, NoHooks, admission
from functions.core.chat.idempotency import Replay, outcome_error, wait_for_outcome
from functions.core.chat.locks import ConversationLocks
from functions.core.chat.recorder import (
    ConversationGoneError,
    OutcomeBacklog,
    ReplyNotRecordedError,
    ReplyRecorder,
)
from functions.core.chat.schemas import (
    ChatEvent,
    ChoiceStarted,
    MessageStarted,
    ReplyDelta,
    ReplyDone,
    ReplyFailed,
    SendRequest,
    UpstreamBatch,
)
from functions.core.conversations import service as conversations
from functions.core.db.notifications import notify
from functions.core.errors import SwitchboardError
from functions.core.keys import access
from functions.core.liveness.inflight import (
    CONVERSATION_DELETED,
    InFlight,
    Interrupted,
    shutting_down,
)
from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import ChatDelta, ChatDone, ChatResult, UpstreamEvent, Usage
from functions.core.llm.streaming import ToolCallParts
from functions.core.messages import service as messages

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncGenerator, AsyncIterator
    from types import TracebackType

    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.llm.client import LLMClient
    from functions.core.llm.schemas import RawStreamEvent, StreamEvent
    from functions.core.messages.schemas import Exchange, MessageOut, Turn


UNFINISHED = "the upstream stream ended without finishing the reply"


class ChatService:
    """The send path for one process; shared by every request (it holds the locks)."""

    def __init__(
        self,
        llm: LLMClient,
        exchanges: Exchanges | None = None,
        *,
        in_flight: InFlight | None = None,
        backlog: OutcomeBacklog | None = None,
        hooks: ExchangeHooks | None = None,
    ) -> None:
        self._llm = llm
        # Around every exchange of every door: where quotas reserve and refund.
        self._hooks: ExchangeHooks = hooks or NoHooks()
        self._locks = ConversationLocks()
        self.exchanges = exchanges or Exchanges()
        self._in_flight = in_flight or InFlight(grace_s=0)
        # Outcomes the database did not take in time (the runtime's, with its journal).
        self._backlog = backlog or OutcomeBacklog()

    async def send(self, request: SendRequest) -> MessageOut:
        """Send and wait for the whole reply. Raises the LLM's error after recording it.

        The model is read as a stream even here, so a hung model fails at the first-token
        timeout instead of holding the conversation for the whole total timeout, and the
        stored time to first token is real.
        """
        reply, error = await self._collected(request)
        if error is not None:
            raise error
        return reply

    async def send_recorded(self, request: SendRequest) -> MessageOut:
        """:meth:`send` for a door that shows every ending (replay): a reply the model
        failed is returned as stored (status ``failed``, its error) instead of raised.
        Every other failure (a shutdown, a deletion, an unrecorded reply) raises as in
        :meth:`send`."""
        reply, _ = await self._collected(request)
        return reply

    async def ask_unstored(
        self, request: SendRequest, config: LLMConfigOut | None, *, model: str | None = None
    ) -> ChatResult:
        """The pipeline's not-stored mode (an unsaved replay, a Responses ``store: false``):
        ``admit``, the in-flight guard, the model's whole reply (text and tool calls
        gathered as :meth:`send` gathers them), ``reconcile`` (told nothing was recorded).
        Nothing is claimed or stored, so there is no lock, no idempotency and no deletion
        to abort it; a shutdown drains it like any send. ``request.messages`` is the whole
        prompt, asked of ``config`` (None: of ``model``, a served model with no
        configuration); ``request.conversation_id`` the conversation it is about.

        Raises the model's ``LLMError`` (its ``partial_text`` what arrived) or, once the
        runtime drains, ``ShuttingDownError``.
        """
        admitted, prompt = await self._admit_unstored(request, config, model)
        parts: list[str] = []
        try:
            with self._in_flight.guard(None) as guard:
                asked = upstream_request(
                    prompt,
                    config,
                    model=config.model if config is not None else model,
                    sampling=request.sampling,
                    extra=request.extra,
                )
                with guard.waiting():
                    result = await self._llm.collect_chat(
                        asked, request_id=request.request_id, into=parts
                    )
            if result.finish_reason is None:
                raise LLMError(UNFINISHED, partial_text=result.content)
        except LLMError as exc:
            exc.partial_text = exc.partial_text or "".join(parts)
            raise
        except Interrupted:
            raise shutting_down({"conversation_id": str(request.conversation_id)}) from None
        finally:
            await self._hooks.reconcile(admitted, None)
        return result

    async def _admit_unstored(
        self, request: SendRequest, config: LLMConfigOut | None, model: str | None
    ) -> tuple[Admission, list[Turn]]:
        """What both unsaved modes check before vLLM is asked: the process still accepts,
        the key may use what the send names, the hooks admit it. Returns the admission
        and the whole prompt."""
        assert request.conversation_id is not None, "the conversation it is about"
        assert request.messages is not None, "the whole prompt"
        self._in_flight.check_accepting()
        access.require(
            request.access,
            config=config.name if config is not None else None,
            model=config.model if config is not None else model,
        )
        admitted = admission(request, request.conversation_id)
        await self._hooks.admit(admitted)
        return admitted, request.messages

    async def stream_unstored(
        self, request: SendRequest, config: LLMConfigOut | None, *, model: str | None = None
    ) -> AsyncGenerator[ReplyDelta | ChatDone, None]:
        """:meth:`ask_unstored`, streamed (a Responses ``store: false`` with ``stream``):
        the reply's text as it arrives (``ReplyDelta``), then the upstream's ``ChatDone``
        (finish, usage, tool calls). Nothing is claimed or stored; closing the iterator
        aborts vLLM. Raises as :meth:`ask_unstored` does (an ``LLMError`` once the stream
        has begun is raised from the iteration)."""
        admitted, prompt = await self._admit_unstored(request, config, model)
        done: ChatDone | None = None
        try:
            with self._in_flight.guard(None) as guard:
                asked = upstream_request(
                    prompt,
                    config,
                    model=config.model if config is not None else model,
                    sampling=request.sampling,
                    extra=request.extra,
                )
                upstream = self._llm.stream_chat(asked, request_id=request.request_id)
                async with aclosing(upstream) as events:
                    while True:
                        with guard.waiting():
                            event = await anext(events, None)
                        if event is None:
                            break
                        if isinstance(event, ChatDelta):
                            yield ReplyDelta(text=event.text)
                        else:
                            done = event
            yield _finished(done)
        except Interrupted:
            raise shutting_down({"conversation_id": str(request.conversation_id)}) from None
        finally:
            await self._hooks.reconcile(admitted, None)

    async def _collected(self, request: SendRequest) -> tuple[MessageOut, SwitchboardError | None]:
        """The stored reply of a send read whole, and the model's error if it failed."""
        _one_choice(request)
        try:
            async with self._exchange(request) as (exchange, recorder, sent):
                return await self._generate(exchange, sent, recorder)
        except Replay as replay:
            reply = await wait_for_outcome(replay.reply_id, self.exchanges.busy_timeout_s)
            return reply, outcome_error(reply)

    def _exchange(self, request: SendRequest) -> _Exchanging:
        """The pipeline's first half and its end, for every door (see :class:`_Exchanging`)."""
        return _Exchanging(self, request)

    async def _generate(
        self,
        exchange: Exchange,
        request: SendRequest,
        recorder: ReplyRecorder,
        events: list[UpstreamEvent] | None = None,
    ) -> tuple[MessageOut, SwitchboardError | None]:
        """The model's whole reply for a claimed exchange, recorded however it ends;
        ``events`` gathers the upstream's own events (:meth:`gather_raw`)."""
        parts: list[str] = []  # what arrived, kept if the send is cut short
        calls = ToolCallParts()  # likewise the tool calls
        # The counts so far, when the upstream sends them on every chunk (the OpenAI
        # door asks for it): what a reply cut short is charged.
        counted: list[Usage] = []
        with self._in_flight.guard(exchange.assistant_message.conversation_id) as guard:
            try:
                with guard.waiting():
                    result = await self._llm.collect_chat(
                        self.exchanges.llm_request(exchange, request),
                        request_id=request.request_id,
                        into=parts,
                        tool_calls=calls,
                        events=events,
                        counted=counted,
                    )
                if result.finish_reason is None:
                    raise LLMError(UNFINISHED, partial_text=result.content, details=_ids(exchange))
            except LLMError as exc:
                stored = await recorder.failed(
                    exc, tool_calls=calls.calls(), usage=counted[-1] if counted else None
                )
                exc.details.update(_ids(exchange))
                return stored, exc
            except Interrupted as stop:
                if stop.reason == "deleted":
                    raise recorder.gone() from None
                await recorder.shutdown(
                    "".join(parts), calls.calls(), counted[-1] if counted else None
                )
                raise shutting_down(_ids(exchange)) from None
            except asyncio.CancelledError:
                await recorder.cancelled(
                    "".join(parts), calls.calls(), counted[-1] if counted else None
                )
                raise
            except Exception as exc:
                await recorder.broken(exc, partial="".join(parts), tool_calls=calls.calls())
                raise
        return await recorder.completed(result.content, result, ttft_ms=result.ttft_ms), None

    async def gather_raw(
        self, request: SendRequest
    ) -> AsyncGenerator[ChatEvent | UpstreamBatch, None]:
        """:meth:`stream_raw` for a door that answers once the reply is whole (the OpenAI
        door's non-streamed answer): ``message``, then the upstream's events in one
        :class:`UpstreamBatch` (read as :meth:`send` reads the model, with no event passed
        up per chunk), then ``done``/``error``. The reply is recorded as :meth:`send`
        records it, a reply cut short with its counts up to the cut; a shutdown, a deletion
        or an outcome the database did not take is an ``error`` event, as in a stream."""
        _one_choice(request)
        try:
            async with self._exchange(request) as (exchange, recorder, sent):
                yield MessageStarted(
                    user_message=exchange.user_message,
                    assistant_message=exchange.assistant_message,
                )
                events: list[UpstreamEvent] = []
                try:
                    reply, error = await self._generate(exchange, sent, recorder, events)
                except SwitchboardError as exc:
                    yield _error_event(exc, recorder.stored)
                    return
                if events:
                    yield UpstreamBatch(events=events)
                yield ReplyDone(message=reply) if error is None else _error_event(error, reply)
        except Replay as replay:
            async for replayed in self._replayed_events(replay.reply_id):
                yield replayed

    def stream(self, request: SendRequest) -> AsyncIterator[ChatEvent]:
        """Send and yield the reply as it arrives: ``message``, ``delta``..., ``done``/``error``.

        Closing the iterator early (the client went away) aborts the upstream request and
        stores what arrived so far as a ``cancelled`` reply. Every other ending is an event:
        the model's errors, a shutdown, a reply the database did not take.
        """
        # Text deltas only: the raw reading mode is off, so no UpstreamEvent is yielded.
        _one_choice(request)
        return cast("AsyncIterator[ChatEvent]", self._streamed(request, raw=False))

    def stream_raw(self, request: SendRequest) -> AsyncIterator[ChatEvent | UpstreamEvent]:
        """:meth:`stream` for a door that passes vLLM's events on as sent (pass-through):
        ``message``, then each upstream SSE event (:class:`UpstreamEvent`, its payload byte
        for byte) instead of ``delta``s, then ``done``/``error``. The reply is gathered,
        recorded and ended exactly as :meth:`stream`'s (the same text, tool calls, usage).

        ``request.choices`` above 1 (OpenAI's ``n``): vLLM's chunks of every choice are
        passed on as they come, interleaved; each choice is stored as a reply of its own
        (``functions.core.chat.choices``), the further ones in ``MessageStarted.choices``
        and ``ReplyDone.choices``."""
        return self._streamed(request, raw=True)

    async def _streamed(
        self, request: SendRequest, *, raw: bool
    ) -> AsyncGenerator[ChatEvent | UpstreamEvent, None]:
        try:
            async with (
                self._exchange(request) as (exchange, recorder, sent),
                aclosing(self._stream_exchange(exchange, sent, recorder, raw=raw)) as events,
            ):
                async for event in events:
                    yield event
        except Replay as replay:
            async for replayed in self._replayed_events(replay.reply_id):
                yield replayed

    async def _replayed_events(self, reply_id: uuid.UUID) -> AsyncGenerator[ChatEvent, None]:
        """A replayed send's events: both stored messages, then how the reply ended."""
        timeout_s = self.exchanges.busy_timeout_s
        reply = await wait_for_outcome(reply_id, timeout_s)
        asked = await messages.get_message_at(reply.conversation_id, reply.seq - 1)
        # An n > 1 send's further choices, each from its branch.
        further = [
            await wait_for_outcome(choice_id, timeout_s)
            for choice_id in await further_choice_ids(asked)
        ]
        yield MessageStarted(
            user_message=asked,
            assistant_message=reply,
            choices=[
                ChoiceStarted(
                    user_message=await messages.get_message_at(
                        choice.conversation_id, choice.seq - 1
                    ),
                    assistant_message=choice,
                )
                for choice in further
            ],
        )
        error = outcome_error(reply)
        yield (
            ReplyDone(message=reply, choices=further)
            if error is None
            else _error_event(error, reply)
        )

    # One generator on purpose, however many endings it handles: every layer of generator
    # between the upstream and the client costs once per event of every stream.
    async def _stream_exchange(  # noqa: PLR0912
        self, exchange: Exchange, request: SendRequest, recorder: ReplyRecorder, *, raw: bool
    ) -> AsyncGenerator[ChatEvent | UpstreamEvent, None]:
        """A claimed exchange's events, recorded however the stream ends: text deltas, or
        (``raw``) the upstream's own events, whose text the stream's reader gathers."""
        parts: list[str] = []
        calls = ToolCallParts()
        # The counts so far, when the upstream sends them on every chunk (a door that asks
        # for ``continuous_usage_stats``): what a reply cut by its client is charged.
        counted: list[Usage] = []
        # n > 1: each choice gathered from the events of its index, and recorded by it.
        choices = recorder if isinstance(recorder, ChoicesRecorder) else None
        try:
            yield (
                MessageStarted(
                    user_message=exchange.user_message,
                    assistant_message=exchange.assistant_message,
                )
                if choices is None
                else MessageStarted(
                    user_message=exchange.user_message,
                    assistant_message=exchange.assistant_message,
                    choices=[
                        ChoiceStarted(
                            user_message=branch.user_message,
                            assistant_message=branch.assistant_message,
                        )
                        for branch in choices.further
                    ],
                )
            )
            done: ChatDone | None = None
            with self._in_flight.guard(exchange.assistant_message.conversation_id) as guard:
                try:
                    asked = self.exchanges.llm_request(exchange, request)
                    # Read here, not through a generator of its own: one layer less per
                    # event. Raw: the reader gathers the text of the events it returns.
                    upstream: AsyncGenerator[StreamEvent | RawStreamEvent, None] = (
                        self._llm.stream_raw(
                            asked,
                            request_id=request.request_id,
                            into=parts if choices is None else None,
                            tool_calls=calls if choices is None else None,
                        )
                        if raw
                        else self._llm.stream_chat(
                            asked, request_id=request.request_id, tool_calls=calls
                        )
                    )
                    async with aclosing(upstream) as events:
                        while True:
                            with guard.waiting():
                                event = await anext(events, None)
                            if event is None:
                                break
                            if isinstance(event, ChatDelta):
                                parts.append(event.text)
                                yield ReplyDelta(text=event.text)
                            elif isinstance(event, ChatDone):
                                done = event
                            else:
                                if event.usage is not None:
                                    counted[:] = (event.usage,)
                                if choices is not None:
                                    choices.add(event)
                                yield event
                except Interrupted as stop:
                    yield await _interrupted_event(
                        stop, recorder, "".join(parts), calls, counted[-1] if counted else None
                    )
                    return
            done = _finished(done)
            stored = await recorder.completed("".join(parts), done, ttft_ms=done.ttft_ms)
            yield (
                ReplyDone(message=stored)
                if choices is None
                else ReplyDone(message=stored, choices=choices.further_stored)
            )
        except LLMError as exc:
            yield await _failed_event(
                exc, recorder, "".join(parts), calls, counted[-1] if counted else None
            )
        except (ReplyNotRecordedError, ConversationGoneError) as exc:
            yield _error_event(exc, None)
        except Exception as exc:
            if not recorder.finished:
                await recorder.broken(exc, partial="".join(parts), tool_calls=calls.calls())
            raise
        finally:
            if not recorder.finished:
                await recorder.cancelled(
                    "".join(parts), calls.calls(), counted[-1] if counted else None
                )

    async def delete_conversation(self, owner: uuid.UUID, conversation_id: uuid.UUID) -> None:
        """Delete a conversation and end any reply being generated in it, here and (through
        a notification on PostgreSQL) in every other process."""
        await conversations.delete_conversation(owner, conversation_id)
        self.conversation_deleted(conversation_id)
        await notify(CONVERSATION_DELETED, str(conversation_id))

    def conversation_deleted(self, conversation_id: uuid.UUID) -> None:
        """Abort this process's sends in a deleted conversation (their clients are told)."""
        self.exchanges.forget(conversation_id)
        self._in_flight.cancel_conversation(conversation_id)


class _Exchanging:
    """``async with``: ownership, ``admit``, the conversation's lock and the claim on the
    way in (giving the exchange, its recorder and the request as prepared); on the way
    out, whatever happened, the lock is let go and ``reconcile`` is told what was
    recorded. A class rather than an ``asynccontextmanager``: every send enters one, and
    the generator-based kind costs several times more."""

    __slots__ = ("_admitted", "_hold", "_recorder", "_request", "_service")

    def __init__(self, service: ChatService, request: SendRequest) -> None:
        self._service = service
        self._request = request
        self._recorder: ReplyRecorder | None = None

    async def __aenter__(self) -> tuple[Exchange, ReplyRecorder, SendRequest]:
        service = self._service
        exchanges = service.exchanges
        service._in_flight.check_accepting()
        # Admitted before anything is stored (``prepare`` may start the conversation), so
        # a refused send leaves nothing behind.
        sent = self._request
        self._admitted = admitted = await exchanges.admission(sent, sent.conversation_id)
        await service._hooks.admit(admitted)
        try:
            request, conversation_id = await exchanges.prepare(sent)
            # One busy budget for the lock's wait and the claim's (the deadline it yields).
            self._hold = hold = conversation_hold(
                service._locks, request, conversation_id, exchanges.busy_timeout_s
            )
            until = await hold.__aenter__()
            try:
                exchange = await exchanges.begin(request, replay_checked=True, deadline=until)
                further = (
                    await exchanges.begin_choices(request, exchange)
                    if request.choices > 1
                    else None
                )
            except BaseException as exc:
                await hold.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        except BaseException:
            await service._hooks.reconcile(admitted, None, generated=False)
            raise
        self._recorder = recorder = (
            ReplyRecorder(exchange, service._backlog)
            if further is None
            else ChoicesRecorder(exchange, service._backlog, further)
        )
        return exchange, recorder, request

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._hold.__aexit__(kind, exc, traceback)
        finally:
            recorder = self._recorder
            stored = recorder.stored if recorder is not None else None
            # The further choices of an n > 1 send: their tokens are spent too.
            others = recorder.further_stored if isinstance(recorder, ChoicesRecorder) else ()
            await self._service._hooks.reconcile(self._admitted, stored, others=others)


async def _interrupted_event(
    stop: Interrupted,
    recorder: ReplyRecorder,
    partial: str,
    calls: ToolCallParts,
    usage: Usage | None = None,
) -> ReplyFailed:
    """The last event of a stream the shutdown or a deletion ended (``usage``: the counts
    up to there, when the upstream sent them on every chunk)."""
    if stop.reason == "deleted":
        return _error_event(recorder.gone(), None)
    stored = await recorder.shutdown(partial, calls.calls(), usage)
    return _error_event(shutting_down(_ids(recorder.exchange)), stored)


async def _failed_event(
    exc: LLMError,
    recorder: ReplyRecorder,
    partial: str,
    calls: ToolCallParts,
    usage: Usage | None = None,
) -> ReplyFailed:
    """The last event of a stream the model failed, its reply recorded ``failed`` (with
    ``usage``, the counts up to the failure, when the upstream sent them on every chunk)."""
    try:
        stored = await recorder.failed(exc, partial=partial, tool_calls=calls.calls(), usage=usage)
    except (ReplyNotRecordedError, ConversationGoneError) as lost:
        return _error_event(lost, None)
    return _error_event(exc, stored)


def _one_choice(request: SendRequest) -> None:
    # Several choices are gathered by index from the upstream's own events: stream_raw only.
    if request.choices > 1:
        raise ValueError("several choices are read only through stream_raw")


def _finished(done: ChatDone | None) -> ChatDone:
    """The end of a stream that finished the reply: vLLM always ends one with its reason,
    so an end without one (or no end) is a cut."""
    if done is None or done.finish_reason is None:
        raise LLMError(UNFINISHED)
    return done


def _ids(exchange: Exchange) -> dict[str, Any]:
    return {
        "conversation_id": str(exchange.assistant_message.conversation_id),
        "user_message_id": str(exchange.user_message.id),
        "assistant_message_id": str(exchange.assistant_message.id),
    }


def _error_event(exc: SwitchboardError, stored: MessageOut | None) -> ReplyFailed:
    return ReplyFailed(
        error={"code": exc.code, "message": exc.message, "details": exc.details},
        message=stored,
    )
