"""Responses items and stored messages, both ways.

In: ``input`` (a string, or items) becomes the turns a send stores, in OpenAI's chat shape
(what vLLM is sent):

- a ``message`` (``role`` user, system, developer or assistant; ``content`` a string or
  parts) is one turn: ``input_text``/``output_text`` parts are its text, ``input_image``
  an ``image_url`` part, ``input_file`` a ``file`` part, as vLLM's chat reads them;
- ``function_call`` items join the assistant turn before them (or start one) as its
  ``tool_calls``; a ``function_call_output`` is a ``tool`` turn answering its ``call_id``;
- an ``item_reference`` is the stored message it names (``msg_...``), of the caller's key
  only; consecutive references to one message (a reply's text and its calls, which share
  its id) are that message once;
- ``reasoning`` items are dropped: chat completions have no field for them.

Out: a stored reply is a ``message`` item (its text, ``output_text`` with no annotations)
and one ``function_call`` item per tool call; every item of a reply carries the reply's
``msg_`` id, so an ``item_reference`` to any of them is that reply. Stored input turns are
listed the same way, by the ids of their messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from functions.core.chat.schemas import message_chars_problem
from functions.core.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from functions.core.messages.schemas import Turn
from functions.core.responses import service as responses
from functions.openai.ids import IdKind, format_id, parse_id

if TYPE_CHECKING:
    import uuid

    from functions.core.messages.schemas import MessageOut

_MESSAGE_ROLES = frozenset({"user", "system", "developer", "assistant"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _bad(message: str, field: str) -> InvalidInputError:
    return InvalidInputError(message, details={"field": field})


def _part(part: Any, field: str) -> dict[str, Any]:
    """One content part in the chat shape vLLM reads."""
    if not isinstance(part, dict):
        raise _bad("a content part is an object with a type", field)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"a {kind} part needs text (a string)", f"{field}.text")
        return {"type": "text", "text": text}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _bad(
                "an input_image needs image_url (a URL or a data: URL); file_id is not "
                "supported: Switchboard stores no files",
                f"{field}.image_url",
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str):
            raise _bad("an input_file needs file_data (file_id is not supported)", field)
        file: dict[str, Any] = {"file_data": data}
        if part.get("filename") is not None:
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise _bad(f"content parts of type {kind!r} are not supported", f"{field}.type")


def _message_turn(item: dict[str, Any], field: str) -> Turn:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise _bad("a message's role is user, system, developer or assistant", f"{field}.role")
    content = item.get("content")
    if isinstance(content, str):
        return Turn(role=role, content=content)
    if not isinstance(content, list):
        raise _bad("a message's content is a string or a list of parts", f"{field}.content")
    parts = [_part(part, f"{field}.content[{index}]") for index, part in enumerate(content)]
    text = "".join(part["text"] for part in parts if part["type"] == "text")
    if all(part["type"] == "text" for part in parts):
        return Turn(role=role, content=text)
    return Turn(role=role, content=text, parts=parts)


def _call(item: dict[str, Any], field: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _bad("a function_call needs call_id and name", field)
    if not isinstance(arguments, str):
        raise _bad("a function_call's arguments are a JSON string", f"{field}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _stored_turn(message: MessageOut) -> Turn:
    return Turn(
        role=message.role,
        content=message.content,
        parts=message.content_parts,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


async def turns_of(
    input_value: str | list[dict[str, Any]], owner: uuid.UUID, max_chars: int
) -> list[Turn]:
    """``input`` as the turns to store (see the module docstring); an ``item_reference``
    that is not the caller's is a 404, as one that names nothing."""
    if isinstance(input_value, str):
        turns = [Turn(role="user", content=input_value)] if input_value else []
    else:
        turns = await _item_turns(input_value, owner)
    for index, turn in enumerate(turns):
        if (too_long := message_chars_problem(turn.content, max_chars)) is not None:
            raise PayloadTooLargeError(
                f"input item {index}'s text {too_long}",
                details={"field": f"input[{index}]", "limit_chars": max_chars},
            )
    return turns


async def _item_turns(  # noqa: PLR0912 - one branch per item type
    items: list[dict[str, Any]], owner: uuid.UUID
) -> list[Turn]:
    references = await _references(items, owner)
    turns: list[Turn] = []
    referenced: uuid.UUID | None = None
    for index, item in enumerate(items):
        field = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "item_reference":
            message = references[str(item.get("id"))]
            if message.id != referenced:
                turns.append(_stored_turn(message))
            referenced = message.id
            continue
        referenced = None
        if kind == "message":
            turns.append(_message_turn(item, field))
        elif kind == "function_call":
            call = _call(item, field)
            last = turns[-1] if turns else None
            if last is not None and any(c.get("id") == call["id"] for c in last.tool_calls or ()):
                # Sent again beside a reference to the reply that made it (the AI SDK
                # references a reply's text and resends its calls).
                continue
            if last is not None and last.role == "assistant" and last.tool_call_id is None:
                turns[-1] = Turn(
                    role="assistant",
                    content=last.content,
                    parts=last.parts,
                    tool_calls=[*(last.tool_calls or ()), call],
                    name=last.name,
                )
            else:
                turns.append(Turn(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise _bad("a function_call_output needs call_id", f"{field}.call_id")
            if isinstance(output, list):
                output = "".join(
                    _part(part, f"{field}.output[{at}]").get("text", "")
                    for at, part in enumerate(output)
                )
            if not isinstance(output, str):
                raise _bad("a function_call_output's output is a string", f"{field}.output")
            turns.append(Turn(role="tool", content=output, tool_call_id=call_id))
        elif kind == "reasoning":
            continue
        else:
            raise _bad(
                f"input items of type {kind!r} are not supported (message, function_call, "
                "function_call_output, item_reference are)",
                f"{field}.type",
            )
    return turns


async def _references(items: list[dict[str, Any]], owner: uuid.UUID) -> dict[str, MessageOut]:
    """The stored messages the ``item_reference`` items name, all of the caller's (one
    statement); the first that is not is a 404 naming it."""
    named: dict[str, uuid.UUID | None] = {}
    for index, item in enumerate(items):
        if item.get("type") != "item_reference":
            continue
        reference = item.get("id")
        if not isinstance(reference, str):
            raise _bad("an item_reference needs id", f"input[{index}].id")
        named[reference] = parse_id(IdKind.MESSAGE, reference)
    if not named:
        return {}
    found = {
        message.id: message
        for message in await responses.messages_of(
            owner, [row_id for row_id in named.values() if row_id is not None]
        )
    }
    resolved: dict[str, MessageOut] = {}
    for reference, row_id in named.items():
        message = found.get(row_id) if row_id is not None else None
        if message is None:
            raise NotFoundError(
                f"Item with id '{reference}' not found.",
                details={"field": "input", "id": reference},
            )
        resolved[reference] = message
    return resolved


def _calls_out(message: MessageOut, status: str) -> list[dict[str, Any]]:
    calls = []
    for call in message.tool_calls or ():
        function = call.get("function") or {}
        calls.append(
            {
                "type": "function_call",
                "id": format_id(IdKind.MESSAGE, message.id),
                "call_id": call.get("id") or "",
                "name": function.get("name") or "",
                "arguments": function.get("arguments") or "",
                "status": status,
            }
        )
    return calls


def output_items(reply: MessageOut, status: str) -> list[dict[str, Any]]:
    """A stored reply as output items: its text (if any, or if it called nothing), then
    its function calls. ``status``: each item's (completed, incomplete, in_progress)."""
    items: list[dict[str, Any]] = []
    if reply.content or not reply.tool_calls:
        items.append(message_item(reply, reply.content, status))
    return items + _calls_out(reply, status)


def message_item(reply: MessageOut, text: str, status: str) -> dict[str, Any]:
    """An assistant ``message`` item holding ``text``."""
    return {
        "type": "message",
        "id": format_id(IdKind.MESSAGE, reply.id),
        "role": "assistant",
        "status": status,
        "content": [output_text(text)],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _content_out(message: MessageOut) -> list[dict[str, Any]]:
    kind = "output_text" if message.role == "assistant" else "input_text"
    if not message.content_parts:
        return [{"type": kind, "text": message.content}]
    parts: list[dict[str, Any]] = []
    for part in message.content_parts:
        if part.get("type") == "text":
            parts.append({"type": kind, "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image.get("url"),
                    "detail": image.get("detail", "auto"),
                }
            )
        elif part.get("type") == "file":
            parts.append({"type": "input_file", **(part.get("file") or {})})
        else:
            parts.append(part)
    if kind == "output_text":
        for part in parts:
            part.setdefault("annotations", [])
    return parts


def stored_items(message: MessageOut) -> list[dict[str, Any]]:
    """A stored turn as the items it was (input_items, conversation items)."""
    item_id = format_id(IdKind.MESSAGE, message.id)
    if message.role == "tool":
        return [
            {
                "type": "function_call_output",
                "id": item_id,
                "call_id": message.tool_call_id or "",
                "output": message.content,
                "status": "completed",
            }
        ]
    items: list[dict[str, Any]] = []
    if message.role != "assistant" or message.content or not message.tool_calls:
        items.append(
            {
                "type": "message",
                "id": item_id,
                "role": message.role,
                "status": "completed",
                "content": _content_out(message),
            }
        )
    return items + _calls_out(message, "completed")
