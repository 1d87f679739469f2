"""What every generating request shares, validated as vLLM validates it: the model, the
sampling checks, the output-length limit, and the tokens one choice of the reply gets (plain
text, or structured output), with how it ends.

Pure functions, no I/O; ``chat.py`` and ``text_completion.py`` build on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from functions.simulator.errors import bad_request, invalid_request, model_not_found
from functions.simulator.logprobs import MAX_LOGPROBS
from functions.simulator.structured import (
    ANSWER_OBJECT_SCHEMA,
    SchemaError,
    json_for_schema,
    pick_choice,
)
from functions.simulator.text import VOCABULARY, apply_stop, generate_reply, tokenize

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from functions.simulator.schemas import ResponseFormat, StructuredOutputs

MAX_N = 16384  # vLLM's VLLM_MAX_N_SEQUENCES default
VOCAB_SIZE = 32000
"""What ``logprobs: -1`` ("the whole vocabulary") asks for: the toy tokenizer's nominal size."""
_PARAM_AT = re.compile(r"at `\$\.([A-Za-z_]+)")
_PARAM_MISSING = re.compile(r"required field `([A-Za-z_]+)`")
T = TypeVar("T")


class PlannedChoice(Protocol):
    """What the engine needs of one choice: its tokens and how it ended."""

    @property
    def index(self) -> int: ...
    @property
    def pieces(self) -> tuple[str, ...]: ...
    @property
    def finish_reason(self) -> str: ...
    @property
    def completion_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """A validated request with every token of its reply decided."""

    model: str
    prompt_tokens: int
    choices: list[PlannedChoice]
    stream: bool
    include_usage: bool
    continuous_usage: bool

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def longest(self) -> int:
        return max(len(choice.pieces) for choice in self.choices)


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """One function call of a choice: its arguments are the choice's pieces from ``start`` to
    the next call's ``start``."""

    id: str
    name: str
    start: int = 0


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    index: int
    pieces: tuple[str, ...]
    """The reply's tokens, one per streamed chunk (the tool calls' arguments, in fragments,
    when ``tool_calls`` is set)."""
    finish_reason: str
    stop_reason: str | None
    tool_calls: tuple[ToolCallPlan, ...] = ()
    call_content: str | None = None
    """``message.content`` beside the calls: None for ``auto`` (the parser found no text),
    ``""`` for a named or ``required`` choice (vLLM's guided path sets it so)."""

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


@dataclass(frozen=True, slots=True)
class SampledPlan(GenerationPlan):
    """A plan whose rendering needs the seed and the logprobs the client asked for."""

    seed: int = 0
    logprobs: int | None = None
    """How many top logprobs each token carries; None: no logprobs at all."""


def decoder(shape: type[T]) -> Callable[[bytes], T]:
    """A request decoder, built once per shape (``msgspec.json.decode(type=...)`` looks its
    decoder up on every call)."""
    return msgspec.json.Decoder(shape, strict=False).decode


def decode_request(body: bytes, decode: Callable[[bytes], T]) -> T:
    """Decode ``body``; a malformed one is a 400 ``Bad Request`` naming the field if it can."""
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _PARAM_AT.search(text) or _PARAM_MISSING.search(text)
        raise invalid_request(text, found.group(1) if found else None) from None
    except msgspec.DecodeError as exc:
        raise invalid_request(f"JSON decode error: {exc}") from None


def resolve_model(requested: str | None, served: tuple[str, ...]) -> str:
    """The served name a request addresses; an empty or missing name means the first model."""
    if not requested:
        return served[0]
    if requested in served:
        return requested
    raise model_not_found(requested)


def check_stream_options(stream: bool, has_options: bool) -> None:
    if has_options and not stream:
        raise invalid_request(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )


def check_sampling(temperature: float | None, top_p: float | None, n: int) -> None:
    if temperature is not None and temperature < 0:
        raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p")
    if n < 1:
        raise bad_request(f"n must be at least 1, got {n}.", "n")
    if n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}, got {n}.", "n")


def check_logprobs_limit(requested: int | None) -> None:
    """vLLM's engine refuses more sample logprobs than ``--max-logprobs`` (20)."""
    if not requested:
        return
    count = VOCAB_SIZE if requested == -1 else requested
    if count > MAX_LOGPROBS:
        raise bad_request(
            f"Requested sample logprobs of {count}, which is greater than max allowed: "
            f"{MAX_LOGPROBS} (parameter=logprobs, value={count})",
            "logprobs",
        )


def output_limit(requested: int | None, param: str, prompt_tokens: int, max_model_len: int) -> int:
    """The most tokens the reply may have: the client's limit, else what the context leaves."""
    if requested is None:
        if prompt_tokens >= max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the length of "
                f"the input messages. (parameter=input_tokens, value={prompt_tokens})",
                "input_tokens",
            )
        return max_model_len - prompt_tokens
    if requested < 1:
        raise bad_request(f"{param} must be at least 1, got {requested}.", param)
    check_context(prompt_tokens, requested, max_model_len, param)
    return requested


def check_context(prompt_tokens: int, requested: int, max_model_len: int, param: str) -> None:
    """vLLM's renderer checks: the output alone, then prompt plus output, against the context."""
    if requested > max_model_len:
        raise bad_request(
            f"{param}={requested} cannot be greater than max_model_len=max_total_tokens="
            f"{max_model_len}. Please request fewer output tokens.",
            param,
        )
    total = prompt_tokens + requested
    if total > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {requested} output tokens and your prompt contains {prompt_tokens} "
            f"input tokens, for a total of {total} tokens. Please reduce the length of the "
            f"input prompt or the number of requested output tokens. "
            f"(parameter=input_tokens, value={prompt_tokens})",
            "input_tokens",
        )


def stop_list(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or ())


def finish_choice(
    index: int, pieces: tuple[str, ...], *, cut: bool, stops: list[str]
) -> ChoicePlan:
    """The choice's end: at the earliest stop string, else ``length`` when ``cut`` short."""
    if stops:
        text, hit = apply_stop("".join(pieces), stops)
        if hit is not None:
            return ChoicePlan(index, tuple(tokenize(text)), "stop", hit)
    return ChoicePlan(index, pieces, "length" if cut else "stop", None)


def structured_text(
    response_format: ResponseFormat | None,
    structured: StructuredOutputs | None,
    *,
    seed: int,
    source: str,
) -> str | None:
    """The text a constrained reply gives, or None when nothing constrains it.

    ``response_format`` wins over ``structured_outputs`` (vLLM folds the first into the
    second). Strings in the JSON are words of ``source`` (the prompt). ``regex``,
    ``grammar`` and ``structural_tag`` are accepted and not enforced: the reply is plain text.
    """
    if response_format is None and structured is None:
        return None
    words = source.split() or list(VOCABULARY)
    if response_format is not None:
        if response_format.type == "json_schema":
            spec = response_format.json_schema
            if spec is None:
                raise invalid_request(
                    "When response_format type is 'json_schema', the 'json_schema' field "
                    "must be provided.",
                    "response_format",
                )
            schema = ANSWER_OBJECT_SCHEMA if spec.schema is None else spec.schema
            return _json_text(schema, seed, words, "response_format")
        if response_format.type == "json_object":
            return _json_text(ANSWER_OBJECT_SCHEMA, seed, words, "response_format")
    if structured is None:
        return None
    return _structured_outputs_text(structured, seed, words)


def _structured_outputs_text(
    structured: StructuredOutputs, seed: int, words: Sequence[str]
) -> str | None:
    kinds = sum(x is not None for x in (structured.json, structured.regex, structured.choice))
    if kinds > 1:
        raise invalid_request(
            "You can only use one kind of constraints for structured outputs "
            "('json', 'regex' or 'choice').",
            "structured_outputs",
        )
    if structured.json is not None:
        return _json_text(structured.json, seed, words, "structured_outputs")
    if structured.choice is not None:
        if not structured.choice:
            raise invalid_request(
                "`structured_outputs.choice` must not be empty.", "structured_outputs"
            )
        return pick_choice(structured.choice, seed)
    if structured.json_object:
        return _json_text(ANSWER_OBJECT_SCHEMA, seed, words, "structured_outputs")
    return None


def _json_text(schema: object, seed: int, words: Sequence[str], param: str) -> str:
    try:
        return json_for_schema(schema, seed, words)
    except SchemaError as exc:
        raise invalid_request(str(exc), param) from None


def plan_text_choice(
    index: int,
    *,
    seed: int,
    echo: str,
    length: int,
    limit: int,
    stops: list[str],
    constrained: str | None,
) -> ChoicePlan:
    """A text choice: the constrained text if any, else ``length`` generated tokens; both cut
    at ``limit`` tokens and at the earliest stop string."""
    if constrained is not None:
        pieces = tuple(tokenize(constrained))
        return finish_choice(index, pieces[:limit], cut=limit < len(pieces), stops=stops)
    pieces = generate_reply(seed + index, echo, min(length, limit))
    return finish_choice(index, pieces, cut=limit < length, stops=stops)
