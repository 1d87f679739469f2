"""A chat completion request as a send: the target, the turns, the sampling and the rest.

The door reads a few fields (``schemas.ChatCompletionCreate``) and passes every other
field of the raw body to vLLM as it came (``extra``), so a field vLLM accepts is never
lost to a door that does not know it. Two things are changed on the way:

- the deprecated ``guided_json``/``guided_regex``/``guided_choice``/``guided_grammar``
  (and ``guided_whitespace_pattern``), removed in vLLM 0.12, become the matching keys of
  ``structured_outputs``, so older clients keep working on newer servers;
- streams always ask vLLM for usage on every chunk (``continuous_usage_stats``), so a
  reply cut by its client still has counts up to the cut; the door strips what its client
  did not ask for (``stream``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.schemas import message_chars_problem
from functions.core.chat.targets import Target
from functions.core.configs.schemas import CONFIG_NAME_PATTERN
from functions.core.errors import InvalidInputError, PayloadTooLargeError
from functions.core.messages.schemas import Turn
from functions.core.schemas import InputValueError, check_value

if TYPE_CHECKING:
    from functions.core.configs.schemas import LLMConfigOut
    from functions.openai.schemas import ChatCompletionCreate, ChatMessageIn

# What the door reads itself; every other body field goes to vLLM as it is.
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed")
_READ = frozenset({"model", "messages", "stream", "stream_options", *SAMPLING_KEYS, "user"})
GUIDED_KEYS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "guided_whitespace_pattern": "whitespace_pattern",
}
_CONFIG_NAME = re.compile(CONFIG_NAME_PATTERN)
_VERSIONED = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,99})@(?P<version>[1-9][0-9]{0,8})\Z")
# Asked of vLLM on every stream: usage on every chunk (see the module docstring).
STREAM_USAGE = {"include_usage": True, "continuous_usage_stats": True}


_RAW_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_decode = msgspec.json.decode


def fields_but_messages(body: bytes) -> dict[str, Any]:
    """The body's fields as sent, but ``messages`` (read from the decoded request): the
    history, most of the body and growing every turn, is not built into Python objects a
    second time."""
    return {
        key: _decode(value) for key, value in _RAW_FIELDS.decode(body).items() if key != "messages"
    }


def target_of(model: str) -> tuple[str, int | None] | None:
    """``(config name, version or None)`` when ``model`` may name a configuration."""
    if (versioned := _VERSIONED.match(model)) is not None:
        return versioned["name"], int(versioned["version"])
    if _CONFIG_NAME.match(model):
        return model, None
    return None


def target(model: str, config: LLMConfigOut | None) -> Target:
    """What answers: the configuration found for ``model``, else the model itself."""
    if config is None:
        return Target(model=model)
    return Target(config=config.name, version=config.version if "@" in model else None)


def extra_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The body's fields the door does not read, for vLLM, with ``guided_*`` rewritten."""
    extra = {key: value for key, value in raw.items() if key not in _READ}
    guided = {
        GUIDED_KEYS[key]: value
        for key in [key for key in extra if key in GUIDED_KEYS]
        if (value := extra.pop(key)) is not None
    }
    if guided:
        given = extra.get("structured_outputs")
        # A client that sends both means the new field: it wins key by key.
        extra["structured_outputs"] = {**guided, **(given if isinstance(given, dict) else {})}
    extra["stream_options"] = STREAM_USAGE
    return extra


def sampling(data: ChatCompletionCreate) -> dict[str, Any]:
    """The request's own sampling fields: they override the configuration's."""
    chosen = {key: value for key in SAMPLING_KEYS if (value := getattr(data, key)) is not None}
    if data.user is not None:
        chosen["user"] = data.user
    return chosen


def _parts_text(parts: list[dict[str, Any]]) -> str:
    """The text of content parts: their text parts joined with nothing between them."""
    return "".join(
        part["text"]
        for part in parts
        if part.get("type") == "text" and isinstance(part.get("text"), str)
    )


def _check_stored(value: Any, index: int, field: str) -> None:
    """What the databases would not store alike (a NUL, an integer beyond 64 bits, JSON
    nested too deep) is a 400 naming the field, as on the chat API."""
    try:
        check_value(value, field)
    except InputValueError as exc:
        raise InvalidInputError(
            f"messages[{index}].{exc}", details={"field": f"messages[{index}].{exc.field}"}
        ) from None


def turns_of(messages: list[ChatMessageIn], max_chars: int) -> list[Turn]:
    """The messages as stored turns: each one's text, and its parts when it has more than
    text. A value the databases would not store alike is a 400 and a text over
    SWITCHBOARD_MAX_MESSAGE_CHARS (``max_chars``) a 413, each naming the message; a tool
    message needs its ``tool_call_id``.

    One pass, the checks written out: it runs for every message of every resent history
    (a plain text message, nearly all of them, costs a NUL test and a length test)."""
    turns: list[Turn] = []
    append = turns.append
    for index, message in enumerate(messages):
        content, role, name = message.content, message.role, message.name
        calls, call_id = message.tool_calls, message.tool_call_id
        if role == "tool" and call_id is None:
            raise InvalidInputError(
                "a tool message needs tool_call_id (the id of the call it answers)",
                details={"field": f"messages[{index}].tool_call_id"},
            )
        if isinstance(content, str):
            if "\x00" in content:
                _check_stored(content, index, "content")
            text, parts = content, None
        elif content is None:
            text, parts = "", None
        else:
            _check_stored(content, index, "content")
            text, parts = _parts_text(content), content
        if name is not None and "\x00" in name:
            _check_stored(name, index, "name")
        if call_id is not None and "\x00" in call_id:
            _check_stored(call_id, index, "tool_call_id")
        if calls is not None:
            _check_stored(calls, index, "tool_calls")
        if len(text) > max_chars:
            raise PayloadTooLargeError(
                f"messages[{index}].content {message_chars_problem(text, max_chars)}",
                details={"field": f"messages[{index}].content", "limit_chars": max_chars},
            )
        append(
            Turn(
                role=role,
                content=text,
                parts=parts,
                # A text turn's empty list of calls is stored as none (parts keep theirs).
                tool_calls=calls if parts is not None else calls or None,
                tool_call_id=call_id,
                name=name,
            )
        )
    return turns


def prompt(turns: list[Turn], config: LLMConfigOut | None) -> list[Turn]:
    """The whole prompt: the configuration's system prompt only when the request brings no
    system or developer turn of its own (the client's instructions win)."""
    if config is None or not config.system_prompt:
        return turns
    if any(turn.role in ("system", "developer") for turn in turns):
        return turns
    return [Turn(role="system", content=config.system_prompt), *turns]


def check_stream_options(raw: dict[str, Any]) -> None:
    """``stream_options`` without ``stream`` is refused, as vLLM refuses it: judged on the
    raw values, as vLLM's validator reads them (an empty ``{}`` passes)."""
    if raw.get("stream_options") and not raw.get("stream"):
        raise InvalidInputError(
            "stream_options can only be given when stream is true",
            details={"field": "stream_options"},
        )


# Each further choice is stored as a conversation of its own holding the whole history:
# the bound keeps one request from storing thousands (vLLM takes up to 16384).
MAX_CHOICES = 16


def choices(n: int | None) -> int:
    """How many choices ``n`` asks for (1 when left out), each stored as a reply of its
    own (``functions.core.chat.choices``); below 1 or above ``MAX_CHOICES`` is a 400
    naming ``n`` before anything is stored."""
    if n is None:
        return 1
    if n < 1:
        raise InvalidInputError(f"n must be at least 1, got {n}", details={"field": "n"})
    if n > MAX_CHOICES:
        raise InvalidInputError(
            f"n={n} asks for more than {MAX_CHOICES} choices: Switchboard stores every "
            "choice as a conversation of its own; ask for fewer, or make several requests",
            details={"field": "n", "limit": MAX_CHOICES},
        )
    return n


def check_n(n: int | None) -> None:
    """A legacy completion is one reply per request (its prompt is stored as a
    conversation of one turn and one reply), so ``n`` above 1 is refused rather than
    silently answered with one choice."""
    if n is not None and n != 1:
        raise InvalidInputError(
            f"n={n} is not supported on /v1/completions: a legacy completion stores one "
            "reply per request; use /v1/chat/completions for several choices, or make "
            "several requests",
            details={"field": "n"},
        )
