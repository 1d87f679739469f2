"""A chat request, validated as vLLM validates it, turned into the reply it will get.

Pure functions, no I/O: the handler in ``completions.py`` decides when the bytes go out.
The checks run in vLLM's order: body shape, then the model (404), then lengths and sampling
parameters (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from functions.simulator.errors import bad_request, invalid_request, model_not_found
from functions.simulator.schemas import ChatRequest, Message
from functions.simulator.text import (
    apply_stop,
    count_tokens,
    generate_reply,
    render_chat,
    reply_seed,
    tokenize,
)

MAX_N = 16384  # vLLM's VLLM_MAX_N_SEQUENCES default
_decode_chat = msgspec.json.Decoder(ChatRequest, strict=False).decode
_PARAM_AT = re.compile(r"at `\$\.([A-Za-z_]+)")
_PARAM_MISSING = re.compile(r"required field `([A-Za-z_]+)`")


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """The one tool call a choice makes: its id and function; its arguments are the
    choice's pieces."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    index: int
    pieces: tuple[str, ...]
    """The reply's tokens, one per streamed content chunk (the tool call's arguments, in
    fragments, when ``tool_call`` is set)."""
    finish_reason: str
    stop_reason: str | None
    tool_call: ToolCallPlan | None = None


@dataclass(frozen=True, slots=True)
class ChatPlan:
    model: str
    prompt_tokens: int
    choices: list[ChoicePlan]
    stream: bool
    include_usage: bool
    continuous_usage: bool

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.pieces) for choice in self.choices)

    @property
    def longest(self) -> int:
        return max(len(choice.pieces) for choice in self.choices)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Decode the body; a malformed one is a 400 ``Bad Request`` naming the field if it can."""
    try:
        return _decode_chat(body)
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


def render_prompt(messages: list[Message], *, add_generation_prompt: bool = True) -> str:
    return render_chat(
        [(m.role, m.text()) for m in messages], add_generation_prompt=add_generation_prompt
    )


def _last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text()
    return ""


def _check_sampling(request: ChatRequest, n: int) -> None:
    if request.temperature is not None and request.temperature < 0:
        raise bad_request(
            f"temperature must be non-negative, got {request.temperature}.", "temperature"
        )
    if request.top_p is not None and not 0 < request.top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {request.top_p}.", "top_p")
    if n < 1:
        raise bad_request(f"n must be at least 1, got {n}.", "n")
    if n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}, got {n}.", "n")


def _output_limit(request: ChatRequest, prompt_tokens: int, max_model_len: int) -> int:
    """The most tokens the reply may have: the client's limit, else what the context leaves."""
    requested: int | None
    if request.max_completion_tokens is not None:
        requested, param = request.max_completion_tokens, "max_completion_tokens"
    else:
        requested, param = request.max_tokens, "max_tokens"
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
    return requested


def _plan_choice(
    index: int, *, seed: int, echo: str, length: int, limit: int, stops: list[str]
) -> ChoicePlan:
    pieces = generate_reply(seed + index, echo, min(length, limit))
    if stops:
        text, hit = apply_stop("".join(pieces), stops)
        if hit is not None:
            return ChoicePlan(index, tuple(tokenize(text)), "stop", hit)
    return ChoicePlan(index, pieces, "length" if limit < length else "stop", None)


def _tool_to_call(request: ChatRequest) -> tuple[str, bool] | None:
    """The function the reply calls and whether it was named, or None for a text reply.

    A model decides for itself; the simulator decides by rule, the same every time: with
    tools offered and ``tool_choice`` not ``none``, a reply to a user's turn calls the named
    function, else the first one offered; a reply to anything else (a tool's answer) is
    text. A named function that was not offered is a 400, as in vLLM.
    """
    tools, choice = request.tools, request.tool_choice
    if not tools or choice == "none":
        return None
    if not isinstance(choice, str) and choice is not None:
        name = choice.function.name
        if all(tool.function.name != name for tool in tools):
            raise bad_request(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
        return name, True
    if not request.messages or request.messages[-1].role != "user":
        return None
    return tools[0].function.name, False


def _plan_tool_call(
    index: int, request: ChatRequest, *, seed: int, echo: str, limit: int
) -> ChoicePlan | None:
    """A choice that calls a function (:func:`_tool_to_call`), or None. Its arguments are
    a JSON object giving the function's first parameter (``input`` if it declares none)
    the user's words; ``max_tokens`` cuts them as it cuts text. vLLM ends an auto or
    required call with ``tool_calls`` and a named one with ``stop``."""
    called = _tool_to_call(request)
    if called is None:
        return None
    name, named = called
    tool = next(tool for tool in request.tools or () if tool.function.name == name)
    properties = (tool.function.parameters or {}).get("properties")
    field = next(iter(properties), "input") if isinstance(properties, dict) else "input"
    pieces = tuple(tokenize(msgspec.json.encode({field: echo}).decode()))
    call = ToolCallPlan(id=f"chatcmpl-tool-{(seed + index) % 2**64:016x}", name=name)
    if limit < len(pieces):
        return ChoicePlan(index, pieces[:limit], "length", None, call)
    return ChoicePlan(index, pieces, "stop" if named else "tool_calls", None, call)


def plan_chat(
    request: ChatRequest, *, served: tuple[str, ...], max_model_len: int, reply_tokens: int
) -> ChatPlan:
    """Validate ``request`` against the server's limits and decide every token of the reply.

    Raises ``ApiError`` with vLLM's status, type, message and ``param``.
    """
    stream = bool(request.stream)
    if request.stream_options is not None and not stream:
        raise invalid_request(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    model = resolve_model(request.model, served)
    n = 1 if request.n is None else request.n
    _check_sampling(request, n)

    prompt = render_prompt(request.messages)
    prompt_tokens = count_tokens(prompt)
    limit = _output_limit(request, prompt_tokens, max_model_len)

    stop = request.stop
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    seed = reply_seed(model, prompt, request.seed, request.temperature, request.top_p)
    echo = _last_user_text(request.messages)
    choices = [
        _plan_tool_call(i, request, seed=seed, echo=echo, limit=limit)
        or _plan_choice(i, seed=seed, echo=echo, length=reply_tokens, limit=limit, stops=stops)
        for i in range(n)
    ]

    options = request.stream_options
    include_usage = bool(stream and options is not None and options.include_usage)
    return ChatPlan(
        model=model,
        prompt_tokens=prompt_tokens,
        choices=choices,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=bool(include_usage and options and options.continuous_usage_stats),
    )
