"""A chat request, validated as vLLM validates it, turned into the reply it will get.

Pure functions, no I/O: ``chat_endpoint.py`` writes the bytes and ``generation.py`` decides
when they go out. The checks run in vLLM's order: body shape, then the model (404), then
lengths and sampling parameters (400).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from functions.simulator.errors import bad_request, invalid_request
from functions.simulator.planning import (
    ChoicePlan,
    SampledPlan,
    ToolCallPlan,
    check_logprobs_limit,
    check_sampling,
    check_stream_options,
    decode_request,
    decoder,
    output_limit,
    plan_text_choice,
    resolve_model,
    stop_list,
    structured_text,
)
from functions.simulator.schemas import ChatRequest, Message
from functions.simulator.text import count_tokens, render_chat, reply_seed, tokenize

_TOOL_CHOICES = ("none", "auto", "required")
_decode_chat = decoder(ChatRequest)


@dataclass(frozen=True, slots=True)
class ChatPlan(SampledPlan):
    """A chat reply: choices of text or tool calls."""


def parse_chat_request(body: bytes) -> ChatRequest:
    """Decode the body; a malformed one is a 400 ``Bad Request`` naming the field if it can."""
    return decode_request(body, _decode_chat)


def render_prompt(messages: list[Message], *, add_generation_prompt: bool = True) -> str:
    return render_chat(
        [(m.role, m.text()) for m in messages], add_generation_prompt=add_generation_prompt
    )


def _last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text()
    return ""


def _check_tools(request: ChatRequest) -> None:
    """vLLM's ``check_tool_usage`` validator."""
    if request.tools == []:
        raise invalid_request(
            "`tools` must not be an empty array. Either provide at least one tool or omit "
            "the field entirely.",
            "tools",
        )
    choice = request.tool_choice
    if choice is None or choice == "none":
        return
    if request.tools is None:
        raise invalid_request("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if isinstance(choice, str) and choice not in _TOOL_CHOICES:
        raise invalid_request(
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", '
            f'"auto" or "required" are supported.',
            "tool_choice",
        )


def _check_logprobs(request: ChatRequest) -> int | None:
    """vLLM's ``check_logprobs``; the number of top logprobs per token, or None for none."""
    top = request.top_logprobs
    if top is not None:
        if top < 0 and top != -1:
            raise invalid_request("`top_logprobs` must be a positive value or -1.", "top_logprobs")
        if (top == -1 or top > 0) and not request.logprobs:
            raise invalid_request(
                "when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs"
            )
    if not request.logprobs:
        return None
    check_logprobs_limit(top)
    return top or 0


def _tools_to_call(request: ChatRequest) -> tuple[list[str], bool] | None:
    """The functions the reply calls and whether one was named, or None for a text reply.

    A model decides for itself; the simulator decides by rule, the same every time. With tools
    offered and ``tool_choice`` not ``none``: a named function is called; ``required`` always
    calls; ``auto`` calls when answering a user's turn (a reply to a tool's answer is text).
    It calls every offered function the user's last turn names, in the order offered (all of
    them in parallel unless ``parallel_tool_calls`` is false, then the first), else the first
    function offered. A named function that was not offered is a 400, as in vLLM.
    """
    tools, choice = request.tools, request.tool_choice
    if not tools or choice == "none":
        return None
    if not isinstance(choice, str) and choice is not None:
        name = choice.function.name
        if all(tool.function.name != name for tool in tools):
            raise bad_request(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
        return [name], True
    if choice != "required" and (not request.messages or request.messages[-1].role != "user"):
        return None
    asked = _last_user_text(request.messages)
    names = [tool.function.name for tool in tools if tool.function.name in asked]
    if not names:
        names = [tools[0].function.name]
    if request.parallel_tool_calls is False:
        names = names[:1]
    return names, False


def _arguments(request: ChatRequest, name: str, echo: str) -> tuple[str, ...]:
    """A call's arguments: a JSON object giving the function's first parameter (``input``
    if it declares none) the user's words."""
    tool = next(tool for tool in request.tools or () if tool.function.name == name)
    properties = (tool.function.parameters or {}).get("properties")
    field = next(iter(properties), "input") if isinstance(properties, dict) else "input"
    return tuple(tokenize(msgspec.json.encode({field: echo}).decode()))


def _plan_tool_calls(
    index: int, request: ChatRequest, *, seed: int, echo: str, limit: int
) -> ChoicePlan | None:
    """A choice that calls functions (:func:`_tools_to_call`), or None. ``max_tokens`` cuts
    the arguments as it cuts text (a call not begun by then is not made). vLLM ends an auto
    or required call with ``tool_calls`` and a named one with ``stop``."""
    called = _tools_to_call(request)
    if called is None:
        return None
    names, named = called
    # vLLM answers auto calls with no content and the guided ones (named, required) with "".
    content = "" if named or request.tool_choice == "required" else None
    pieces: list[str] = []
    calls: list[ToolCallPlan] = []
    for number, name in enumerate(names):
        call_id = f"chatcmpl-tool-{(seed + index * 131 + number) % 2**64:016x}"
        calls.append(ToolCallPlan(id=call_id, name=name, start=len(pieces)))
        pieces += _arguments(request, name, echo)
    if limit < len(pieces):
        made = tuple(call for call in calls if call.start < limit)
        return ChoicePlan(index, tuple(pieces[:limit]), "length", None, made, content)
    finish = "stop" if named else "tool_calls"
    return ChoicePlan(index, tuple(pieces), finish, None, tuple(calls), content)


def plan_chat(
    request: ChatRequest, *, served: tuple[str, ...], max_model_len: int, reply_tokens: int
) -> ChatPlan:
    """Validate ``request`` against the server's limits and decide every token of the reply.

    Raises ``ApiError`` with vLLM's status, type, message and ``param``.
    """
    stream = bool(request.stream)
    options = request.stream_options
    check_stream_options(stream, options is not None and not options.empty)
    _check_tools(request)
    logprobs = _check_logprobs(request)
    model = resolve_model(request.model, served)
    n = 1 if request.n is None else request.n
    check_sampling(request.temperature, request.top_p, n)

    prompt = render_prompt(request.messages)
    prompt_tokens = count_tokens(prompt)
    requested: int | None
    if request.max_completion_tokens is not None:
        requested, param = request.max_completion_tokens, "max_completion_tokens"
    else:
        requested, param = request.max_tokens, "max_tokens"
    limit = output_limit(requested, param, prompt_tokens, max_model_len)

    stops = stop_list(request.stop)
    seed = reply_seed(model, prompt, request.seed, request.temperature, request.top_p)
    echo = _last_user_text(request.messages)
    choices = [
        _plan_tool_calls(i, request, seed=seed, echo=echo, limit=limit)
        or plan_text_choice(
            i,
            seed=seed,
            echo=echo,
            length=reply_tokens,
            limit=limit,
            stops=stops,
            constrained=structured_text(
                request.response_format, request.structured_outputs, seed=seed + i, source=echo
            ),
        )
        for i in range(n)
    ]

    include_usage, continuous_usage = (False, False) if options is None else options.usage(stream)
    return ChatPlan(
        model=model,
        prompt_tokens=prompt_tokens,
        choices=list(choices),
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        seed=seed,
        logprobs=logprobs,
    )
