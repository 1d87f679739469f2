"""``POST /v1/completions``: a legacy completion plan (``text_completion.py``) written in
vLLM's ``text_completion`` shapes, streamed or not.

vLLM's stream has no role chunk: each choice's first chunk carries its first token (after the
echoed prompt, with ``echo``). Chunks are serialized with ``exclude_unset``; every field the
code passes is present, nulls included (``logprobs``, ``finish_reason``, ``stop_reason``,
``prompt_token_ids``, ``token_ids``), ``usage`` only with ``continuous_usage_stats``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import msgspec

from functions.simulator.generation import GenerationEndpoint
from functions.simulator.logprobs import completion_logprobs
from functions.simulator.planning import decode_request, decoder
from functions.simulator.schemas import CompletionRequest, TextChoice, TextCompletion, Usage
from functions.simulator.text_completion import TextChoicePlan, TextCompletionPlan, plan_completion

if TYPE_CHECKING:
    from functions.simulator.overrides import Timing
    from functions.simulator.planning import GenerationPlan

_encode = msgspec.json.Encoder().encode
_decode_completion = decoder(CompletionRequest)


class TextCompletionRenderer:
    """One legacy completion's bytes: the whole body, or its SSE events."""

    __slots__ = ("_choices", "_created", "_head", "_id", "_plan")

    def __init__(self, plan: TextCompletionPlan, completion_id: str, created: int) -> None:
        self._plan = plan
        # The planner made every choice a TextChoicePlan; the engine only sees PlannedChoice.
        self._choices = cast("list[TextChoicePlan]", plan.choices)
        self._id = completion_id
        self._created = created
        self._head = (
            b'data: {"id":'
            + _encode(completion_id)
            + b',"object":"text_completion","created":%d,"model":' % created
            + _encode(plan.model)
            + b',"choices":['
        )

    def _logprobs(
        self, choice: TextChoicePlan, first: int, last: int, text_offset: int
    ) -> dict[str, Any] | None:
        """Logprobs of the choice's tokens ``first`` to ``last`` (exclusive), counting the
        echoed prompt's tokens first."""
        plan = self._plan
        if plan.logprobs is None:
            return None
        echoed = choice.echo.tokens if choice.echo is not None else ()
        tokens = (*echoed, *choice.generated)
        return completion_logprobs(
            tokens[first:last],
            seed=plan.seed + choice.index,
            first_position=first,
            top=plan.logprobs,
            text_offset=text_offset,
            unscored=1 if echoed and first == 0 else 0,
        )

    def body(self) -> bytes:
        plan = self._plan
        choices = []
        for choice in self._choices:
            echoed = choice.echo
            prefix = echoed.text if echoed is not None else ""
            total = (len(echoed.tokens) if echoed is not None else 0) + len(choice.generated)
            choices.append(
                TextChoice(
                    index=choice.index,
                    text=prefix + "".join(choice.generated),
                    logprobs=self._logprobs(choice, 0, total, 0),
                    finish_reason=choice.finish_reason,
                    stop_reason=choice.stop_reason,
                )
            )
        prompt, completion = plan.prompt_tokens, plan.completion_tokens
        return _encode(
            TextCompletion(
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
        return []

    def step(self, step: int, events: list[bytes]) -> None:
        plan = self._plan
        for choice in self._choices:
            pieces = choice.pieces
            last = len(pieces) - 1
            if step > last:
                continue
            finished = step == last
            logprobs = b"null"
            if plan.logprobs is not None:
                logprobs = _encode(self._step_logprobs(choice, step))
            tail = (
                b'"finish_reason":'
                + _encode(choice.finish_reason)
                + b',"stop_reason":'
                + _encode(choice.stop_reason)
                if finished
                else b'"finish_reason":null,"stop_reason":null'
            )
            usage = b""
            if plan.continuous_usage:
                produced = choice.completion_tokens if finished else step + 1
                usage = b"," + _usage(choice.prompt_tokens, produced)
            events.append(
                self._head
                + b'{"index":%d,"text":' % choice.index
                + _encode(pieces[step])
                + b',"logprobs":'
                + logprobs
                + b","
                + tail
                + b',"prompt_token_ids":null,"token_ids":null}]'
                + usage
                + b"}\n\n"
            )

    def _step_logprobs(self, choice: TextChoicePlan, step: int) -> dict[str, Any] | None:
        """The logprobs of step ``step``'s chunk: the echoed prompt and the first token at step
        0; one token after. Offsets count the completion's text only (as vLLM's do)."""
        echoed = len(choice.echo.tokens) if choice.echo is not None else 0
        generated = choice.generated
        if step == 0:
            return self._logprobs(choice, 0, echoed + min(len(generated), 1), 0)
        offset = sum(len(token) for token in generated[:step])
        return self._logprobs(choice, echoed + step, echoed + step + 1, offset)

    def usage(self, completion_tokens: int) -> bytes:
        prompt = self._plan.prompt_tokens
        return self._head + b"]," + _usage(prompt, completion_tokens) + b"}\n\n"


def _usage(prompt: int, completion: int) -> bytes:
    return b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt,
        prompt + completion,
        completion,
    )


class TextCompletions(GenerationEndpoint):
    """``/v1/completions`` of one app."""

    id_prefix = "cmpl-"

    def plan(self, body: bytes, timing: Timing) -> tuple[GenerationPlan, str | None]:
        request = decode_request(body, _decode_completion)
        state = self._state
        plan = plan_completion(
            request,
            served=state.options.models,
            max_model_len=state.options.max_model_len,
            reply_tokens=timing.tokens,
            vocabulary=state.vocabulary,
        )
        return plan, request.request_id

    def renderer(
        self, plan: GenerationPlan, completion_id: str, created: int
    ) -> TextCompletionRenderer:
        assert isinstance(plan, TextCompletionPlan)
        return TextCompletionRenderer(plan, completion_id, created)
