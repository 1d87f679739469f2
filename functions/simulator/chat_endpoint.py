"""``POST /v1/chat/completions``: a chat plan (``chat.py``) written in vLLM's chat shapes.

The request's life (faults, queue, timing, disconnects) is the shared engine's
(``generation.py``); this module only says how a body becomes a plan and how the plan's
tokens look on the wire, streamed (``chunks.py``) or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import msgspec

from functions.simulator.chat import ChatPlan, parse_chat_request, plan_chat
from functions.simulator.chunks import ChunkEncoder
from functions.simulator.generation import GenerationEndpoint
from functions.simulator.logprobs import chat_logprobs
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
    from functions.simulator.planning import ChoicePlan, GenerationPlan

_encode = msgspec.json.Encoder().encode


def _message(choice: ChoicePlan) -> AssistantMessage:
    if not choice.tool_calls:
        return AssistantMessage(content="".join(choice.pieces))
    calls = choice.tool_calls
    ends = [call.start for call in calls[1:]] + [len(choice.pieces)]
    return AssistantMessage(
        content=choice.call_content,
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

    __slots__ = ("_choices", "_chunks", "_created", "_id", "_plan", "_with_logprobs")
    _chunks: ChunkEncoder

    def __init__(self, plan: ChatPlan, completion_id: str, created: int) -> None:
        self._plan = plan
        # The planner made every choice a ChoicePlan; the engine only sees PlannedChoice.
        self._choices = cast("list[ChoicePlan]", plan.choices)
        self._with_logprobs = plan.logprobs is not None
        self._id = completion_id
        self._created = created
        if plan.stream:  # a whole body needs no chunk encoder, and building one costs
            self._chunks = ChunkEncoder(
                completion_id=completion_id,
                created=created,
                model=plan.model,
                prompt_tokens=plan.prompt_tokens,
                continuous_usage=plan.continuous_usage,
            )

    def _logprobs(self, choice: ChoicePlan, step: int) -> bytes:
        """The encoded logprobs of the token of ``choice`` at ``step``."""
        plan = self._plan
        return _encode(
            chat_logprobs(
                choice.pieces[step : step + 1],
                seed=plan.seed + choice.index,
                first_position=step,
                top=plan.logprobs or 0,
            )
        )

    def body(self) -> bytes:
        plan = self._plan
        prompt, completion = plan.prompt_tokens, plan.completion_tokens
        choices = []
        for choice in self._choices:
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
        chunks, choices = self._chunks, self._choices
        events = [chunks.role(choice.index) for choice in choices]
        for choice in choices:
            if choice.tool_calls:
                first = choice.tool_calls[0]
                events.append(chunks.tool_call_start(choice.index, 0, first.id, first.name))
        return events

    def step(self, step: int, events: list[bytes]) -> None:
        chunks = self._chunks
        plain = not self._with_logprobs
        for choice in self._choices:
            pieces = choice.pieces
            count = len(pieces)
            if step < count - 1:
                if plain and not choice.tool_calls:
                    events.append(chunks.token(choice.index, pieces[step], step + 1))
                    continue
                finish = None
            elif step == count - 1 or (step == 0 and count == 0):
                finish = choice.finish_reason
            else:
                continue
            piece = pieces[step] if count else ""
            logprobs = self._logprobs(choice, step) if self._with_logprobs else None
            if choice.tool_calls:
                self._tool_step(
                    choice, step, piece, finish=finish, logprobs=logprobs, events=events
                )
            elif finish is None:
                events.append(
                    chunks.content(choice.index, piece, produced=step + 1, logprobs=logprobs)
                )
            else:
                events.append(
                    chunks.content(
                        choice.index,
                        piece,
                        produced=count,
                        finish_reason=finish,
                        stop_reason=choice.stop_reason,
                        logprobs=logprobs,
                    )
                )

    def _tool_step(
        self,
        choice: ChoicePlan,
        step: int,
        piece: str,
        *,
        finish: str | None,
        logprobs: bytes | None,
        events: list[bytes],
    ) -> None:
        """A fragment of the arguments of the call under way, after that call's header when
        it is the fragment a later call starts with."""
        chunks = self._chunks
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
                produced=len(choice.pieces) if finish is not None else step + 1,
                finish_reason=finish,
                stop_reason=choice.stop_reason if finish is not None else None,
                logprobs=logprobs,
            )
        )

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
