"""A ``POST /v1/responses`` as a send of the one pipeline: where it is stored, what is
stored, and the whole prompt, built from stored state.

- ``previous_response_id``: the history is that response's conversation up to its reply
  (completed exchanges, the prompt rule's; one primary-key lookup finds the reply,
  whatever the chain's length). If the reply is still its conversation's last message
  (or only failed or cancelled exchanges came after it: a client retrying), the new turns
  are appended there, and the claim checks that nothing else was appended meanwhile;
  otherwise, or when another response got there first, the send is a **branch**: a new
  conversation holding the whole history, recording the reply it forked from. Threading
  does exactly this for the chat door (``functions.core.threads``); the turns are stored
  with their chain hashes, so the chat door's resends of the same history find them.
- ``conversation``: the turns are appended to that conversation of the caller's; the
  claim reads its history under the conversation's lock (the ``history`` prompt mode,
  ``instructions`` as its system prompt), so responses appended at once see each other.
- neither: the input is the whole history, threaded as the chat door threads it
  (``functions.core.threads``): appended to the conversation that holds it, a branch of
  one it parts from, or a new conversation.

``instructions`` are a system turn at the head of this request's prompt only: never
stored as a turn, so a response continued from this one does not inherit them (OpenAI's
rule); they are kept with the reply's request fields, which a retrieve shows.

``store: false`` takes the pipeline's not-stored mode (``ChatService.ask_unstored``):
the prompt is built the same way, the call is admitted, guarded and reconciled like any
send, and nothing of it is written. Storing it and hiding it would keep, in every export
and evaluation, what the client asked not to keep.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.chat.schemas import SendRequest
from functions.core.configs.schemas import LLMConfigOut
from functions.core.conversations import service as conversations
from functions.core.errors import ConflictError, InvalidInputError, NotFoundError
from functions.core.messages.schemas import Turn
from functions.core.responses import service as responses
from functions.core.threads import service as threads
from functions.core.threads.chain import chain
from functions.core.threads.schemas import ForkPoint, Thread
from functions.openai import chat_request
from functions.openai.headers import TITLE_CHARS
from functions.openai.ids import IdKind, parse_id
from functions.openai.responses.items import turns_of

if TYPE_CHECKING:
    from functions.core.keys.schemas import KeyAccess
    from functions.core.settings import Settings
    from functions.openai.responses.schemas import ResponseCreate

NIL = uuid.UUID(int=0)
LAST_SEQ = 2**31 - 1  # every message of a conversation (``seq`` is a 32-bit integer)
# What the door reads itself, and the Responses fields chat completions have no use for;
# every other body field reaches vLLM as it came.
_READ = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
        "text", "max_output_tokens", "temperature", "top_p", "metadata", "store",
        "previous_response_id", "conversation", "stream", "background", "truncation",
        "user", "reasoning", "include", "prompt_cache_key", "safety_identifier",
        "service_tier", "stream_options", "top_logprobs", "max_tool_calls", "prompt",
    }
)  # fmt: skip


class PreviousInProgressError(ConflictError):
    code = "previous_response_in_progress"


class Planned(msgspec.Struct, frozen=True, kw_only=True):
    """The send, the request fields stored with its reply, and (not stored) what the
    not-stored mode asks."""

    send: SendRequest
    fields: dict[str, Any]
    store: bool
    config: LLMConfigOut | None


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidInputError(
            f"tools of type {tool.get('type')!r} are not supported: vLLM runs function tools only",
            details={"field": f"tools[{index}].type"},
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(
            "a function tool needs a name", details={"field": f"tools[{index}].name"}
        )
    function = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidInputError(
        'tool_choice is auto, none, required or {"type": "function", "name": ...}',
        details={"field": "tool_choice"},
    )


def extra_fields(data: ResponseCreate, raw: dict[str, Any]) -> dict[str, Any]:
    """What vLLM's chat completions are asked besides the prompt and sampling: the tools,
    the output format, and the body's fields the door does not read."""
    extra = {key: value for key, value in raw.items() if key not in _READ}
    if data.tools:
        extra["tools"] = [_tool(tool, index) for index, tool in enumerate(data.tools)]
    if data.tool_choice is not None:
        extra["tool_choice"] = _tool_choice(data.tool_choice)
    if data.parallel_tool_calls is not None:
        extra["parallel_tool_calls"] = data.parallel_tool_calls
    form = data.text.format if data.text is not None else None
    if form is not None and form.type == "json_schema":
        schema: dict[str, Any] = {"name": form.name or "response", "schema": form.schema or {}}
        if form.strict is not None:
            schema["strict"] = form.strict
        if form.description is not None:
            schema["description"] = form.description
        extra["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif form is not None and form.type == "json_object":
        extra["response_format"] = {"type": "json_object"}
    effort = (data.reasoning or {}).get("effort")
    if isinstance(effort, str):
        extra["reasoning_effort"] = effort
    extra["stream_options"] = chat_request.STREAM_USAGE
    return extra


def sampling(data: ResponseCreate) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    if data.temperature is not None:
        chosen["temperature"] = data.temperature
    if data.top_p is not None:
        chosen["top_p"] = data.top_p
    if data.max_output_tokens is not None:
        chosen["max_tokens"] = data.max_output_tokens
    if data.user is not None:
        chosen["user"] = data.user
    return chosen


def stored_fields(data: ResponseCreate, raw: dict[str, Any], input_count: int) -> dict[str, Any]:
    """What a retrieve shows back about the request (kept on the reply's row)."""
    fields: dict[str, Any] = {
        "model": data.model,
        "instructions": data.instructions,
        "tools": data.tools,
        "tool_choice": data.tool_choice,
        "parallel_tool_calls": data.parallel_tool_calls,
        "text": raw.get("text"),
        "max_output_tokens": data.max_output_tokens,
        "temperature": data.temperature,
        "top_p": data.top_p,
        "metadata": data.metadata,
        "previous_response_id": data.previous_response_id,
        "conversation": data.conversation_id(),
        "truncation": data.truncation,
        "user": data.user,
        "reasoning": data.reasoning,
        "store": data.store is not False,
        "input_count": input_count,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _title(turns: list[Turn]) -> str:
    for turn in turns:
        if turn.role == "user" and turn.content:
            return turn.content[:TITLE_CHARS]
    return ""


def check(data: ResponseCreate) -> None:
    """What is refused before anything is read or stored."""
    if data.background:
        raise InvalidInputError(
            "background mode is not supported by this gateway: send the request without "
            "background (stream it to see progress); a response is stored as it is "
            "generated and can be retrieved once it has finished",
            details={"field": "background"},
        )
    if data.previous_response_id is not None and data.conversation is not None:
        raise InvalidInputError(
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            details={"field": "previous_response_id"},
        )


async def _previous(owner: uuid.UUID, shown: str) -> responses.Previous:
    stored = await responses.previous_of(owner, parse_id(IdKind.RESPONSE, shown))
    if stored is None:
        raise NotFoundError(
            f"Previous response with id '{shown}' not found.",
            details={"field": "previous_response_id", "id": shown},
        )
    if stored.status == "pending":
        raise PreviousInProgressError(
            f"Previous response with id '{shown}' is still in progress; continue from it "
            "once it has finished",
            details={"field": "previous_response_id", "id": shown},
        )
    return stored


async def _conversation(owner: uuid.UUID, shown: str) -> uuid.UUID:
    conversation_id = parse_id(IdKind.CONVERSATION, shown)
    try:
        await conversations.get_conversation(owner, conversation_id or NIL)
    except NotFoundError:
        raise NotFoundError(
            f"Conversation with id '{shown}' not found.",
            details={"field": "conversation", "id": shown},
        ) from None
    assert conversation_id is not None
    return conversation_id


async def plan(
    data: ResponseCreate,
    raw: dict[str, Any],
    *,
    owner: uuid.UUID,
    access: KeyAccess,
    config: LLMConfigOut | None,
    settings: Settings,
    request_id: str | None,
) -> Planned:
    """The send for a request (see the module docstring)."""
    check(data)
    new_turns = await turns_of(data.input, owner, settings.max_message_chars)
    if not new_turns:
        raise InvalidInputError("input is empty: send text or items", details={"field": "input"})
    instructions = [Turn(role="system", content=data.instructions)] if data.instructions else []
    store = data.store is not False
    base = SendRequest(
        owner=owner,
        access=access,
        turns=new_turns,
        title=_title(new_turns),
        prompt="exact",
        target=chat_request.target(data.model, config),
        sampling=sampling(data),
        extra=extra_fields(data, raw),
        request_id=request_id,
    )
    fields = stored_fields(data, raw, len(new_turns))
    cap = settings.history_max_messages
    if data.previous_response_id is not None:
        previous = await _previous(owner, data.previous_response_id)
        history = await responses.history_through(previous.conversation_id, previous.seq, cap)
        whole = [*history, *new_turns]
        send = _continued(base, previous, whole, store=store)
        send = msgspec.structs.replace(
            send, messages=chat_request.prompt([*instructions, *whole], config)
        )
    elif (named := data.conversation_id()) is not None:
        conversation_id = await _conversation(owner, named)
        fields["conversation"] = named
        if store:
            # The claim reads the history under the conversation's lock: two responses
            # appended at once each see the other's exchange if it came first.
            send = msgspec.structs.replace(
                base,
                conversation_id=conversation_id,
                prompt="history",
                instructions=data.instructions or None,
            )
        else:
            history = await responses.history_through(conversation_id, LAST_SEQ, cap)
            send = msgspec.structs.replace(
                base,
                conversation_id=conversation_id,
                messages=chat_request.prompt([*instructions, *history, *new_turns], config),
            )
    elif store:
        # Threaded as the chat door's resends are: a client that sends the whole history
        # (the Vercel AI SDK, its earlier replies as item_references) appends to the
        # conversation holding it, instead of starting one per turn.
        send = msgspec.structs.replace(
            await threads.threaded(base),
            messages=chat_request.prompt([*instructions, *new_turns], config),
        )
        # Its input items are the turns stored with it (the rest were stored before).
        fields["input_count"] = len(send.turns)
    else:
        send = msgspec.structs.replace(
            base,
            messages=chat_request.prompt([*instructions, *new_turns], config),
            conversation_id=NIL,
        )
    return Planned(send=send, fields=fields, store=store, config=config)


def _continued(
    base: SendRequest, previous: responses.Previous, whole: list[Turn], *, store: bool
) -> SendRequest:
    """A send continuing ``previous``: appended to its conversation or a branch of it."""
    if not store:
        return msgspec.structs.replace(base, conversation_id=previous.conversation_id)
    hashes = chain(base.owner, whole)
    tail = previous.seq
    if tail != previous.last_seq and not previous.answered_after:
        tail = previous.last_seq  # only failed or cancelled exchanges since: append after them
    if tail == previous.last_seq:
        return msgspec.structs.replace(
            base,
            conversation_id=previous.conversation_id,
            thread=Thread(
                history=whole,
                chain=hashes,
                expect_last_seq=tail,
                tail_message_id=previous.reply_id,
            ),
        )
    fork = ForkPoint(conversation_id=previous.conversation_id, message_id=previous.reply_id)
    return msgspec.structs.replace(
        base,
        conversation_id=None,
        turns=whole,
        thread=Thread(history=whole, chain=hashes, forked_from=fork),
    )
