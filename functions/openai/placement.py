"""Which conversation a request's turns are stored in, and which of them are new.

OpenAI's clients send the whole history every time. By default the door threads it
(``functions.core.threads``, one indexed lookup): a history that extends a stored
conversation of the caller's is appended to it, one that parts from where a conversation
has moved on is a branch, anything else a new conversation.

``X-Switchboard-Conversation: <id>`` appends to that conversation of the caller's: the
request's messages must be its counted history (completed exchanges only, what a
``history`` prompt would send) followed by at least one new turn, else a 409 says where
they part. A conversation the door threaded is found by the lookup; one started elsewhere
(the chat API) carries no chain hashes and is compared turn by turn (the turns appended
to it are hashed, so its later resends thread into it without the header).
``X-Switchboard-Conversation: new`` stores the whole history as a new conversation (which
later resends without the header thread into).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from functions.core.chat.prompt import counted_history
from functions.core.conversations import service as conversations
from functions.core.errors import ConflictError, InvalidInputError
from functions.core.messages import service as messages
from functions.core.messages.schemas import StoredTurn, Turn
from functions.core.threads import service as threads
from functions.core.threads.chain import chain
from functions.core.threads.schemas import Located

if TYPE_CHECKING:
    from functions.core.chat.schemas import SendRequest
    from functions.core.messages.schemas import MessageOut

HEADER = "X-Switchboard-Conversation"
NEW = "new"
_PAGE = 500


class HistoryMismatchError(ConflictError):
    code = "history_mismatch"


def conversation_of(header: str) -> uuid.UUID | None:
    """The conversation the header names; None for ``new``."""
    if header.strip().lower() == NEW:
        return None
    try:
        return uuid.UUID(header.strip())
    except ValueError:
        raise InvalidInputError(
            f"{HEADER} is a conversation id or 'new', not {header!r}",
            details={"field": HEADER, "source": "header"},
        ) from None


def _stored_turn(message: MessageOut) -> StoredTurn:
    return StoredTurn(
        seq=message.seq,
        status=message.status,
        turn=Turn(
            role=message.role,
            content=message.content,
            parts=message.content_parts,
            tool_calls=message.tool_calls,
            tool_call_id=message.tool_call_id,
            name=message.name,
        ),
    )


def _calls(calls: list[dict[str, Any]] | None) -> list[tuple[Any, ...]]:
    # What identifies a call once a client sends it back (it may add or drop other keys).
    found = []
    for call in calls or ():
        function = call.get("function") or {}
        found.append((call.get("id"), function.get("name"), function.get("arguments")))
    return found


def same_turn(sent: Turn, stored: Turn) -> bool:
    """Whether a sent turn is the stored one: role, text, name, tool calls, tool_call_id."""
    return (
        sent.role == stored.role
        and sent.content == stored.content
        and sent.name == stored.name
        and sent.tool_call_id == stored.tool_call_id
        and _calls(sent.tool_calls) == _calls(stored.tool_calls)
    )


async def stored_history(owner: uuid.UUID, conversation_id: uuid.UUID) -> list[Turn]:
    """The conversation's counted history (a 404 when it is not the caller's)."""
    stored: list[StoredTurn] = []
    cursor = None
    while True:
        page = await messages.list_messages(owner, conversation_id, limit=_PAGE, cursor=cursor)
        stored += [_stored_turn(message) for message in page.data]
        if page.next_cursor is None:
            return counted_history(stored)
        cursor = page.next_cursor


async def new_turns(owner: uuid.UUID, conversation_id: uuid.UUID, turns: list[Turn]) -> list[Turn]:
    """The turns of ``turns`` after the conversation's history; 409 when they do not
    extend it."""
    history = await stored_history(owner, conversation_id)
    for index, stored in enumerate(history):
        if index >= len(turns) or not same_turn(turns[index], stored):
            raise HistoryMismatchError(
                f"messages do not extend conversation {conversation_id}: they part from its "
                f"history at messages[{index}] (it holds {len(history)} counted messages); "
                f"send its whole history plus new turns, or {HEADER}: new",
                details={"field": f"messages[{index}]", "conversation_id": str(conversation_id)},
            )
    if len(turns) == len(history):
        raise HistoryMismatchError(
            f"messages add nothing to conversation {conversation_id}: send at least one new turn",
            details={"field": "messages", "conversation_id": str(conversation_id)},
        )
    return turns[len(history) :]


async def placed(request: SendRequest, header: str | None) -> SendRequest:
    """``request`` (its ``turns`` the whole history) where the header says (see the
    module docstring)."""
    if header is None:
        return await threads.threaded(request)
    conversation_id = conversation_of(header)
    if conversation_id is None:
        # New, but hashed: its later resends thread into it.
        return threads.new_thread(request)
    # Another key's conversation is a 404 before anything about it is compared.
    await conversations.get_conversation(request.owner, conversation_id)
    located = await threads.locate(request.owner, request.turns)
    if located.conversation_id == conversation_id:
        return threads.place(request, located)
    history = request.turns
    turns = await new_turns(request.owner, conversation_id, history)
    # Hashed as a threaded append is: its later resends thread into it, and a send of
    # several choices has the whole history for their branches.
    return threads.place(
        request,
        Located(
            chain=chain(request.owner, history),
            conversation_id=conversation_id,
            matched=len(history) - len(turns),
        ),
    )
