"""``POST /v1/chat/completions``: a chat plan (``chat.py``) written in vLLM's chat shapes.

The request's life (faults, queue, timing, disconnects) is the shared engine's
(``generation.py``); this module only says how a body becomes a plan and how the plan's
tokens look on the wire, streamed (``chunks.py``) or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from functions.simulator.chat import ChatPlan, parse_chat_request, plan_chat
from functions.simulator.chunks import ChunkEncoder
from functions.simulator.generation import GenerationEndpoint, GenerationPlan, PlannedChoice
from functions.simulator.logprobs import chat_logprobs
from functions.simulator.planning import ChoicePlan
from functions.simulator.schemas import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    FunctionCall,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from functions.simulator.overrides import Timing

_encode = msgspec.json.Encoder().encode


def _message(choice: ChoicePlan) -> AssistantMessage:
    if not choice.tool_calls:
        return AssistantMessage(content="".join(choice.pieces))
    calls = choice.tool_calls
    ends = [call.start for call in calls[1:]] + [len(choice.pieces)]
    return AssistantMessage(
        content=None,
        tool_calls=[
            ToolCall(
                id=call.id,
                function=FunctionCall(
                    name=call.name, arguments="".join(choice.pieces[call.start : end])
                ),
            )
            for call, end in zip(calls, ends, strict=True)
        ],
    )


class ChatRenderer:
    """One chat reply's bytes: the whole body, or its SSE events."""

    __slots__ = ("_chunks", "_created", "_id", "_plan")

    def __init__(self, plan: ChatPlan, completion_id: str, created: int) -> None:
        self._plan = plan
        self._id = completion_id
        self._created = created
        self._chunks = ChunkEncoder(
            completion_id=completion_id,
            created=created,
            model=plan.model,
            prompt_tokens=plan.prompt_tokens,
            continuous_usage=plan.continuous_usage,
        )

    def _logprobs(self, choice: ChoicePlan, first: int, pieces: tuple[str, ...]) -> bytes:
        plan = self._plan
        if plan.logprobs is None:
            return b"null"
        return _encode(
            chat_logprobs(
                pieces, seed=plan.seed + choice.index, first_position=first, top=plan.logprobs
            )
        )

    def body(self) -> bytes:
        plan = self._plan
        prompt, completion = plan.prompt_tokens, plan.completion_tokens
        choices = []
        for choice in plan.choices:
            assert isinstance(choice, ChoicePlan)
            logprobs = None
            if plan.logprobs is not None:
                logprobs = chat_logprobs(
                    choice.pieces,
                    seed=plan.seed + choice.index,
                    first_position=0,
                    top=plan.logprobs,
                )
            choices.append(
                Choice(
                    index=choice.index,
                    message=_message(choice),
                    logprobs=logprobs,
                    finish_reason=choice.finish_reason,
                    stop_reason=choice.stop_reason,
                )
            )
        return _encode(
            ChatCompletion(
                id=self._id,
                created=self._created,
                model=plan.model,
                choices=choices,
                usage=Usage(
                    prompt_tokens=prompt,
                    total_tokens=prompt + completion,
                    completion_tokens=completion,
                ),
            )
        )

    def opening(self) -> list[bytes]:
        """Each choice's role chunk, then the first tool call's header of each calling one."""
        chunks, choices = self._chunks, self._plan.choices
        events = [chunks.role(choice.index) for choice in choices]
        for choice in choices:
            assert isinstance(choice, ChoicePlan)
            if choice.tool_calls:
                first = choice.tool_calls[0]
                events.append(chunks.tool_call_start(choice.index, 0, first.id, first.name))
        return events

    def step(self, choice: PlannedChoice, step: int) -> list[bytes]:
        assert isinstance(choice, ChoicePlan)
        pieces = choice.pieces
        count = len(pieces)
        last = max(count - 1, 0)
        if step > last:
            return []
        piece = pieces[step] if count else ""
        logprobs = self._logprobs(choice, step, pieces[step : step + 1])
        finish = choice.finish_reason if step == last else None
        stop = choice.stop_reason if step == last else None
        chunks = self._chunks
        if not choice.tool_calls:
            return [
                chunks.content(
                    choice.index,
                    piece,
                    produced=step + 1 if count else 0,
                    finish_reason=finish,
                    stop_reason=stop,
                    logprobs=logprobs,
                )
            ]
        events = []
        call = 0
        for number, planned in enumerate(choice.tool_calls):
            if planned.start <= step:
                call = number
            if number and planned.start == step:
                header = chunks.tool_call_start(choice.index, number, planned.id, planned.name)
                events.append(header)
        events.append(
            chunks.tool_arguments(
                choice.index,
                call,
                piece,
                produced=step + 1 if count else 0,
                finish_reason=finish,
                stop_reason=stop,
                logprobs=logprobs,
            )
        )
        return events

    def usage(self, completion_tokens: int) -> bytes:
        return self._chunks.usage(completion_tokens)


class ChatCompletions(GenerationEndpoint):
    """``/v1/chat/completions`` of one app."""

    id_prefix = "chatcmpl-"

    def plan(self, body: bytes, timing: Timing) -> tuple[GenerationPlan, str | None]:
        request = parse_chat_request(body)
        options = self._state.options
        plan = plan_chat(
            request,
            served=options.models,
            max_model_len=options.max_model_len,
            reply_tokens=timing.tokens,
        )
        return plan, request.request_id

    def renderer(self, plan: GenerationPlan, completion_id: str, created: int) -> ChatRenderer:
        assert isinstance(plan, ChatPlan)
        return ChatRenderer(plan, completion_id, created)
