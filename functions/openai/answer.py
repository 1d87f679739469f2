"""The door's answer to one send, for chat and legacy completions alike.

A handler starts the send (``ChatService.stream_raw``; ``gather_raw`` for a non-streamed
answer, which reads vLLM whole with no event passed up per chunk) and hands its events
here: the stored messages come first (``placement_headers`` say where), then either a
stream relayed from vLLM's first chunk on (read before the 200, so a request vLLM refuses
is an HTTP error, as vLLM's own server answers), or the upstream's events gathered
(``facts``) into one body once the reply is stored. A failure after the exchange was
stored is raised with the headers that say where. Closing the events on any exit aborts
vLLM at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from litestar import Response
from litestar.response import Stream

from functions.chat.app import SSE_HEADERS
from functions.core.chat.schemas import MessageStarted, ReplyDone, ReplyFailed, UpstreamBatch
from functions.core.llm.schemas import UpstreamEvent
from functions.openai.completion import placement_headers
from functions.openai.failures import raised
from functions.openai.relay import UsageWanted, relay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from functions.core.chat.schemas import ChatEvent
    from functions.core.messages.schemas import MessageOut
    from functions.openai.schemas import StreamOptions


class Facts(Protocol):
    """What a non-streamed answer gathers from the upstream's events."""

    def add(self, event: UpstreamEvent) -> None: ...


F = TypeVar("F", bound=Facts)


async def answered(
    events: AsyncIterator[ChatEvent | UpstreamEvent | UpstreamBatch],
    *,
    stream: bool,
    options: StreamOptions | None,
    facts: F,
    body: Callable[[ReplyDone, MessageStarted, F], Any],
    replayed: Callable[[MessageOut, UsageWanted], AsyncIterator[bytes]] | None = None,
    chunk_id: Callable[[MessageStarted], bytes] | None = None,
    on_started: Callable[[MessageStarted], Awaitable[None]] | None = None,
) -> Response[Any]:
    """The HTTP answer to a send's ``events``. ``body`` writes a non-streamed answer from the
    stored reply (``ReplyDone``: with ``n`` > 1, every choice) and ``facts``; ``replayed``
    writes a stream replayed by its Idempotency-Key (None: ``relay`` writes it, from the
    stored reply). ``chunk_id`` names a relayed stream's chunks after the stored
    exchange (None: vLLM's ids); ``on_started`` runs once the exchange is stored, before
    vLLM's answer is read."""
    try:
        started = await anext(events)
        if not isinstance(started, MessageStarted):
            raise RuntimeError(f"the send path began with {type(started).__name__}")
        headers = placement_headers(started)
        if on_started is not None:
            await on_started(started)
        if stream:
            first = await anext(events)
            if isinstance(first, ReplyFailed):
                raise raised(first.error, headers)
            wanted = UsageWanted(
                include=bool(options and options.include_usage),
                continuous=bool(options and options.continuous_usage_stats),
            )
            replay = replayed is not None and isinstance(first, ReplyDone)
            return Stream(
                replayed(first.message, wanted)  # type: ignore[misc, union-attr]
                if replay
                else relay(events, wanted, first, None if chunk_id is None else chunk_id(started)),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
                status_code=200,
            )
        async for event in events:
            if isinstance(event, UpstreamBatch):
                for upstream in event.events:
                    facts.add(upstream)
            elif isinstance(event, UpstreamEvent):
                facts.add(event)
            elif isinstance(event, ReplyDone):
                return Response(body(event, started, facts), status_code=200, headers=headers)
            elif isinstance(event, ReplyFailed):
                raise raised(event.error, headers)
        raise RuntimeError("the send path ended without a reply")
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
