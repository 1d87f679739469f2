"""Several choices in one exchange (OpenAI's ``n`` > 1): each stored as a reply of its own.

vLLM answers ``n`` choices in one response, their chunks interleaved by ``index``. Every
choice is stored, and every conversation stays one linear history:

- the first choice is the reply in the send's own conversation, where threading and
  resends find it as for any send;
- each further choice is the reply of a **branch**: a new conversation of the same key
  holding the whole history (with its chain hashes), forked from the send's user turn
  (``forked_from_conversation_id``/``forked_from_message_id``). A resend of the history
  with that choice appended threads into its branch.

Each choice is claimed before vLLM is called (``Exchanges.begin_choices``) and recorded
however the stream ends (:class:`ChoicesRecorder`): its own text, tool calls and finish,
gathered from the events of its ``index``.

**Usage is counted once.** vLLM reports one usage for the request: the prompt once and
every choice's tokens (``continuous_usage_stats`` gives each choice's own running count
on its chunks). The split is exact: the first choice carries the prompt's tokens and its
own completion tokens, each further choice ``prompt_tokens: 0`` and its own completion
tokens, so the usage ledger's rows of one request add up to vLLM's usage, never to ``n``
times its prompt. Without per-choice counts (an upstream that sends only the final
usage) the first choice carries the whole usage and the others none.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import msgspec

from functions.core.chat.recorder import ReplyRecorder, ToolCalls, _to_the_end
from functions.core.db.sql import fetch
from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import ChatDone, ChatResult, Usage
from functions.core.llm.streaming import ToolCallParts

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from functions.core.chat.recorder import OutcomeBacklog
    from functions.core.llm.schemas import UpstreamEvent
    from functions.core.messages.schemas import Exchange, MessageOut

UNFINISHED = "the upstream stream ended without finishing this choice"


class _Choice:
    """One choice as its events arrive."""

    __slots__ = ("calls", "completion_tokens", "finish_reason", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls = ToolCallParts()
        self.finish_reason: str | None = None
        # Its own running count (``continuous_usage_stats``), None until one arrives.
        self.completion_tokens: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ChoicesRecorder(ReplyRecorder):
    """The recorder of an ``n`` > 1 exchange: the first choice is recorded as this
    recorder's own reply (``exchange``), each further one through a recorder of its
    branch's exchange (``further``). Every ending records every choice, each with what
    arrived for it (:meth:`add`); the arguments a single reply would be ended with (the
    send path's merged text) are ignored. A deleted first conversation leaves the
    branches' replies to the sweep."""

    def __init__(
        self, exchange: Exchange, backlog: OutcomeBacklog, further: list[Exchange]
    ) -> None:
        super().__init__(exchange, backlog)
        self._further = [ReplyRecorder(branch, backlog) for branch in further]
        self._choices = [_Choice() for _ in range(len(further) + 1)]
        self._prompt_tokens: int | None = None
        self._total: Usage | None = None
        # The further choices as stored, in order, once recorded.
        self.further_stored: list[MessageOut] = []

    @property
    def further(self) -> list[Exchange]:
        return [recorder.exchange for recorder in self._further]

    def add(self, event: UpstreamEvent) -> None:
        """Gather one upstream event into its choice (by ``index``)."""
        usage = event.usage
        if event.usage_only:
            self._total = usage
            return
        if not 0 <= event.index < len(self._choices):
            return  # not a choice that was asked for: nothing to store it in
        choice = self._choices[event.index]
        if event.text:
            choice.parts.append(event.text)
        if event.tool_calls:
            choice.calls.add(event.tool_calls)
        if event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
        if usage is not None:
            self._prompt_tokens = usage.prompt_tokens
            choice.completion_tokens = usage.completion_tokens

    def _usages(self) -> list[Usage | None]:
        """Each choice's share of the request's usage (see the module docstring)."""
        choices = self._choices
        prompt = self._prompt_tokens
        if prompt is None:
            return [self._total, *(None for _ in choices[1:])]
        counts = [choice.completion_tokens or 0 for choice in choices]
        further = sum(counts[1:])
        # The final usage's sum is vLLM's word for the total; the first choice takes what
        # the further ones' own counts leave of it, so the shares always add up to it.
        first = self._total.completion_tokens - further if self._total else counts[0]
        return [
            Usage(prompt_tokens=prompt, completion_tokens=first, total_tokens=prompt + first),
            *(Usage(prompt_tokens=0, completion_tokens=c, total_tokens=c) for c in counts[1:]),
        ]

    async def _each(
        self, end: Callable[[ReplyRecorder, _Choice, Usage | None], Awaitable[MessageOut]]
    ) -> MessageOut:
        """Record every choice (the first as this recorder's own reply), one after the
        other in one task a cancellation cannot interrupt; the first choice's stored reply,
        or the first error once every choice has been tried. ``end`` calls the single-reply
        ending on ``ReplyRecorder`` itself, so that this class's overrides do not recurse."""
        usages = self._usages()

        async def record_all() -> MessageOut:
            first_error: BaseException | None = None
            stored: MessageOut | None = None
            for index, recorder in enumerate([self, *self._further]):
                try:
                    if recorder is self:
                        stored = await end(recorder, self._choices[0], usages[0])
                    else:
                        self.further_stored.append(
                            await end(recorder, self._choices[index], usages[index])
                        )
                except Exception as exc:  # the others are recorded all the same
                    first_error = first_error or exc
            if first_error is not None:
                raise first_error
            assert stored is not None
            return stored

        return await _to_the_end(asyncio.ensure_future(record_all()))

    async def completed(
        self, content: str, end: ChatResult | ChatDone, *, ttft_ms: float | None
    ) -> MessageOut:
        async def one(recorder: ReplyRecorder, choice: _Choice, usage: Usage | None) -> MessageOut:
            if choice.finish_reason is None:
                return await ReplyRecorder.failed(
                    recorder,
                    LLMError(UNFINISHED),
                    partial=choice.text,
                    tool_calls=choice.calls.calls(),
                    usage=usage,
                )
            own = msgspec.structs.replace(
                end,
                usage=usage,
                finish_reason=choice.finish_reason,
                tool_calls=choice.calls.calls(),
            )
            return await ReplyRecorder.completed(recorder, choice.text, own, ttft_ms=ttft_ms)

        return await self._each(one)

    async def failed(
        self,
        exc: LLMError,
        *,
        partial: str = "",
        tool_calls: ToolCalls = None,
        usage: Usage | None = None,
    ) -> MessageOut:
        async def one(recorder: ReplyRecorder, choice: _Choice, share: Usage | None) -> MessageOut:
            return await ReplyRecorder.failed(
                recorder,
                exc,
                partial=choice.text or (exc.partial_text if recorder is self else ""),
                tool_calls=choice.calls.calls(),
                usage=share,
            )

        return await self._each(one)

    async def broken(
        self, exc: BaseException, *, partial: str = "", tool_calls: ToolCalls = None
    ) -> MessageOut:
        async def one(recorder: ReplyRecorder, choice: _Choice, _: Usage | None) -> MessageOut:
            return await ReplyRecorder.broken(
                recorder, exc, partial=choice.text, tool_calls=choice.calls.calls()
            )

        return await self._each(one)

    async def cancelled(
        self, partial: str = "", tool_calls: ToolCalls = None, usage: Usage | None = None
    ) -> MessageOut:
        async def one(recorder: ReplyRecorder, choice: _Choice, share: Usage | None) -> MessageOut:
            return await ReplyRecorder.cancelled(recorder, choice.text, choice.calls.calls(), share)

        return await self._each(one)

    async def shutdown(
        self, partial: str = "", tool_calls: ToolCalls = None, usage: Usage | None = None
    ) -> MessageOut:
        async def one(recorder: ReplyRecorder, choice: _Choice, share: Usage | None) -> MessageOut:
            return await ReplyRecorder.shutdown(recorder, choice.text, choice.calls.calls(), share)

        return await self._each(one)


# The first reply claimed in each branch forked from a send's user turn (its choice: the
# history's copies are turns, which no process owns), in the order they were started.
_FURTHER_CHOICES = (
    "SELECT m.id FROM conversation c JOIN message m ON m.conversation = c.id "
    "WHERE c.owner_key = (SELECT o.owner_key FROM conversation o WHERE o.id = {}) "
    "AND c.forked_from_conversation_id = {} AND c.forked_from_message_id = {} "
    "AND m.seq = (SELECT MIN(x.seq) FROM message x WHERE x.conversation = c.id "
    "AND x.owner_instance IS NOT NULL) ORDER BY c.created_at, c.id"
)


async def further_choice_ids(asked: MessageOut) -> list[uuid.UUID]:
    """The replies of the further choices of the send whose user turn is ``asked`` (none
    for a send of one choice): what a replayed ``n`` > 1 send answers again."""
    rows = await fetch(_FURTHER_CHOICES, asked.conversation_id, asked.conversation_id, asked.id)
    return [uuid.UUID(str(row["id"])) for row in rows]
