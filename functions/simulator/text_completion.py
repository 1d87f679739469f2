"""A legacy ``/v1/completions`` request, validated as vLLM validates it, turned into its reply.

Each prompt of the request is its own engine request with ``n`` choices, numbered
``prompt_index * n + choice``; usage adds every prompt once and every choice's tokens. A text
prompt gets the tokenizer's BOS (``add_special_tokens``, as ``/tokenize`` counts it); a
token-id prompt is taken as is. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from functions.simulator.errors import bad_request, invalid_request
from functions.simulator.planning import (
    SampledPlan,
    check_context,
    check_logprobs_limit,
    check_sampling,
    check_stream_options,
    output_limit,
    plan_text_choice,
    resolve_model,
    stop_list,
    structured_text,
)
from functions.simulator.text import BOS, reply_seed, tokenize

if TYPE_CHECKING:
    from functions.simulator.schemas import CompletionRequest
    from functions.simulator.text import TokenVocabulary

_EMPTY_PROMPT = "Either prompt or prompt_embeds must be provided and non-empty."
_PROMPT_SHAPE = (
    "prompt must be a string, a list of strings, a list of token ids (integers >= 0) or a "
    "list of lists of token ids"
)


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt as the engine sees it: its text (what ``echo`` repeats) and its tokens."""

    text: str
    tokens: tuple[str, ...]
    key: str
    """What the reply's seed is drawn from: the text (without a leading BOS)."""


@dataclass(frozen=True, slots=True)
class TextChoicePlan:
    index: int
    generated: tuple[str, ...]
    """The tokens of the completion proper (after any stop string cut it)."""
    finish_reason: str
    stop_reason: str | None
    completion_tokens: int
    prompt_tokens: int
    """Its prompt's tokens (``continuous_usage_stats`` counts per prompt)."""
    echo: Prompt | None
    """The prompt the text starts with (``echo``), or None."""
    pieces: tuple[str, ...]
    """The streamed text, one chunk per step: the echoed prompt rides with the first token."""


@dataclass(frozen=True, slots=True)
class TextCompletionPlan(SampledPlan):
    """A legacy completion's reply."""


def _prompts(request: CompletionRequest, vocabulary: TokenVocabulary) -> list[Prompt]:
    if request.prompt_embeds is not None:
        raise invalid_request(
            "You must set `--enable-prompt-embeds` to input `prompt_embeds`.", "prompt_embeds"
        )
    raw = request.prompt
    if raw is None or raw in ("", []):
        raise invalid_request(_EMPTY_PROMPT)
    if isinstance(raw, str):
        return [_text_prompt(raw, request.add_special_tokens)]
    if all(isinstance(item, str) for item in raw):
        return [_text_prompt(item, request.add_special_tokens) for item in raw]
    if all(_is_token(item) for item in raw):
        return [_token_prompt(raw, vocabulary)]
    if all(isinstance(item, list) and all(_is_token(t) for t in item) for item in raw):
        return [_token_prompt(item, vocabulary) for item in raw]
    raise invalid_request(_PROMPT_SHAPE, "prompt")


def _is_token(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and item >= 0


def _text_prompt(text: str, add_special_tokens: bool) -> Prompt:
    tokens = tokenize(text)
    if add_special_tokens:
        tokens.insert(0, BOS)
    return Prompt(text, tuple(tokens), text)


def _token_prompt(ids: list[int], vocabulary: TokenVocabulary) -> Prompt:
    try:
        pieces = vocabulary.pieces_of(ids)
    except IndexError as exc:
        raise bad_request(f"Token id {exc.args[0]} is out of vocabulary", "prompt") from None
    # Seeded by the text the ids spell (after the BOS /tokenize adds), so a prompt sent as
    # its ids gets the reply its text gets.
    key = "".join(pieces[1:] if pieces and pieces[0] == BOS else pieces)
    return Prompt("".join(pieces), tuple(pieces), key)


def _check(request: CompletionRequest) -> int | None:
    if request.suffix is not None:
        # vLLM declares the field and then refuses it in the renderer.
        raise bad_request("suffix is not currently supported")
    logprobs = request.logprobs
    if logprobs is not None and logprobs < 0:
        raise invalid_request(
            f"`logprobs` must be a positive value. (parameter=logprobs, value={logprobs})",
            "logprobs",
        )
    check_logprobs_limit(logprobs)
    return logprobs


def plan_completion(
    request: CompletionRequest,
    *,
    served: tuple[str, ...],
    max_model_len: int,
    reply_tokens: int,
    vocabulary: TokenVocabulary,
) -> TextCompletionPlan:
    """Validate ``request`` against the server's limits and decide every token of the reply.

    Raises ``ApiError`` with vLLM's status, type, message and ``param``.
    """
    stream = bool(request.stream)
    options = request.stream_options
    check_stream_options(stream, options is not None and not options.empty)
    logprobs = _check(request)
    model = resolve_model(request.model, served)
    n = request.n
    check_sampling(request.temperature, request.top_p, n)
    prompts = _prompts(request, vocabulary)

    echo = bool(request.echo)
    only_echo = echo and request.max_tokens == 0
    stops = stop_list(request.stop)
    choices: list[TextChoicePlan] = []
    prompt_tokens = 0
    for number, prompt in enumerate(prompts):
        count = len(prompt.tokens)
        prompt_tokens += count
        if only_echo:
            # vLLM generates one token it never shows, and counts it.
            check_context(count, 0, max_model_len, "max_tokens")
            choices += [
                TextChoicePlan(number * n + i, (), "length", None, 1, count, prompt, (prompt.text,))
                for i in range(n)
            ]
            continue
        limit = output_limit(request.max_tokens, "max_tokens", count, max_model_len)
        seed = reply_seed(model, prompt.key, request.seed, request.temperature, request.top_p)
        for i in range(n):
            constrained = structured_text(
                request.response_format,
                request.structured_outputs,
                seed=seed + i,
                source=prompt.key,
            )
            planned = plan_text_choice(
                i,
                seed=seed,
                echo=prompt.key,
                length=reply_tokens,
                limit=limit,
                stops=stops,
                constrained=constrained,
            )
            generated = planned.pieces
            shown = prompt if echo else None
            pieces = generated or ("",)
            if shown is not None:
                pieces = (shown.text + pieces[0], *pieces[1:])
            choices.append(
                TextChoicePlan(
                    number * n + i,
                    generated,
                    planned.finish_reason,
                    planned.stop_reason,
                    len(generated),
                    count,
                    shown,
                    pieces,
                )
            )

    include_usage, continuous_usage = (False, False) if options is None else options.usage(stream)
    return TextCompletionPlan(
        model=model,
        prompt_tokens=prompt_tokens,
        choices=list(choices),
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        seed=reply_seed(model, tuple(prompt.key for prompt in prompts), request.seed),
        logprobs=logprobs,
    )
