"""OpenAI's Conversations API: a conversation is a Switchboard conversation, an item a message.

``conv_<hex>`` is the conversation's UUID, ``msg_<hex>`` a message's (``functions.openai.ids``):
a conversation created here is an ordinary conversation of the key (readable and
writable through the chat API, threaded by the door's chat completions), and any
conversation of the key, however it was started, is readable here.

- Items are the conversation's messages in ``seq`` order, rendered as Responses items
  (``functions.openai.responses.items``): a message with its parts (``input_text`` for
  user, system and developer turns, ``output_text`` for the assistant's), a
  ``function_call`` per tool call of an assistant turn (sharing its ``msg_`` id), a
  ``function_call_output`` per tool turn. A reply being generated is ``in_progress``, a
  failed or cancelled one ``incomplete``.
- Appending items takes the conversation's lock, as a send does
  (``functions.core.conversations.items``): while a reply is pending it is a 409
  ``conversation_busy`` with ``Retry-After``.
- Deleting an item deletes its message (every item sharing its id): ``seq`` keeps its gap,
  and the chain hashes from there on are cleared, so a client resending a history past
  that point branches instead of appending.

Another key's conversation or item is the same 404 as a missing one, after the same
lookup.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from msgspec import Meta

from functions.core.chat.service import ChatService
from functions.core.conversations import items as stored
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate, ConversationOut
from functions.core.conversations.schemas import ConversationUpdate as StoredUpdate
from functions.core.errors import NotFoundError
from functions.core.keys.schemas import Principal
from functions.core.web.docs import errors
from functions.core.web.policy import OPENAI
from functions.core.web.state import settings_of
from functions.openai.headers import TITLE_CHARS
from functions.openai.ids import IdKind, format_id, parse_id
from functions.openai.metadata import Metadata, check_metadata
from functions.openai.paging import After, Limit, OrderBy, page
from functions.openai.responses.items import stored_items, turns_of

if TYPE_CHECKING:
    from functions.core.messages.schemas import MessageOut

MAX_ITEMS = 20
_NIL = uuid.UUID(int=0)
# What OpenAI calls a message's status, by the stored status.
_STATUS = {
    "complete": "completed",
    "pending": "in_progress",
    "failed": "incomplete",
    "cancelled": "incomplete",
}

Items = Annotated[
    list[dict[str, Any]],
    Meta(max_length=MAX_ITEMS, description="Up to 20 items: messages, function calls, ..."),
]
ConversationPath = Annotated[str, PathParameter(description="A conversation id (`conv_...`)")]
ItemPath = Annotated[str, PathParameter(description="An item id (`msg_...`)")]
Include = Annotated[
    list[str] | None,
    QueryParameter(
        name="include[]",
        description="Accepted for compatibility; every item is returned whole already.",
    ),
]


class ConversationCreateBody(msgspec.Struct, kw_only=True):
    items: Items | None = None
    metadata: Metadata | None = None


class ConversationUpdateBody(msgspec.Struct, kw_only=True):
    metadata: Metadata


class ItemsCreateBody(msgspec.Struct, kw_only=True):
    items: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_ITEMS)]


def _conversation_out(conversation: ConversationOut) -> dict[str, Any]:
    return {
        "id": format_id(IdKind.CONVERSATION, conversation.id),
        "object": "conversation",
        "created_at": int(conversation.created_at.timestamp()),
        "metadata": conversation.metadata,
    }


def _missing_conversation(text: str) -> NotFoundError:
    return NotFoundError(f"Conversation with id '{text}' not found.", details={"id": text})


def _missing_item(text: str) -> NotFoundError:
    return NotFoundError(f"Item with id '{text}' not found.", details={"id": text})


async def _owned(owner: uuid.UUID, text: str) -> uuid.UUID:
    """The conversation ``text`` names if it is ``owner``'s; a 404 otherwise, after the
    same lookup whether it is malformed, missing or another key's."""
    conversation_id = parse_id(IdKind.CONVERSATION, text)
    if not await stored.owns(owner, conversation_id or _NIL) or conversation_id is None:
        raise _missing_conversation(text)
    return conversation_id


def items_of(message: MessageOut) -> list[dict[str, Any]]:
    """A stored message as its items, each with the message's status."""
    status = _STATUS.get(message.status, "completed")
    rendered = stored_items(message)
    for item in rendered:
        item["status"] = status
    return rendered


def _title(turns: list[Any]) -> str:
    for turn in turns:
        if turn.role == "user" and turn.content:
            return str(turn.content)[:TITLE_CHARS]
    return ""


@post(
    "/conversations",
    summary="Create a conversation (OpenAI Conversations API)",
    status_code=200,
    responses=errors(404, 413, 415, policy=OPENAI),
)
async def create_conversation(
    data: JSONBody[ConversationCreateBody],
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
) -> dict[str, Any]:
    """A conversation of your key holding ``items`` (up to 20), with ``metadata``; the
    default configuration's, when one is set (a chat API send can continue it)."""
    owner = principal.key_id
    turns = await turns_of(
        data.items or [], owner, settings_of(request.app.state).max_message_chars
    )
    metadata = check_metadata(data.metadata)
    created, _ = await stored.start(
        owner, ConversationCreate(title=_title(turns), metadata=metadata), turns
    )
    return _conversation_out(created)


@get(
    "/conversations/{conversation_id:str}",
    summary="Retrieve a conversation (OpenAI Conversations API)",
    responses=errors(404, policy=OPENAI),
)
async def retrieve_conversation(
    conversation_id: ConversationPath, principal: NamedDependency[Principal]
) -> dict[str, Any]:
    row = await _owned(principal.key_id, conversation_id)
    return _conversation_out(await conversations.get_conversation(principal.key_id, row))


@post(
    "/conversations/{conversation_id:str}",
    summary="Update a conversation's metadata (OpenAI Conversations API)",
    status_code=200,
    responses=errors(404, 413, 415, policy=OPENAI),
)
async def update_conversation(
    conversation_id: ConversationPath,
    data: JSONBody[ConversationUpdateBody],
    principal: NamedDependency[Principal],
) -> dict[str, Any]:
    """``metadata`` replaces the conversation's metadata, as at OpenAI."""
    row = await _owned(principal.key_id, conversation_id)
    metadata = check_metadata(data.metadata)
    updated = await conversations.update_conversation(
        principal.key_id, row, StoredUpdate(metadata=metadata)
    )
    return _conversation_out(updated)


@delete(
    "/conversations/{conversation_id:str}",
    summary="Delete a conversation and its items (OpenAI Conversations API)",
    status_code=200,
    responses=errors(404, policy=OPENAI),
)
async def delete_conversation(
    conversation_id: ConversationPath,
    principal: NamedDependency[Principal],
    chat: NamedDependency[ChatService],
) -> dict[str, Any]:
    """As the chat API's delete: its messages go with it, a reply being generated in it
    is aborted."""
    row = await _owned(principal.key_id, conversation_id)
    await chat.delete_conversation(principal.key_id, row)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@get(
    "/conversations/{conversation_id:str}/items",
    summary="List a conversation's items (OpenAI Conversations API)",
    responses=errors(404, policy=OPENAI),
)
async def list_items(
    *,
    conversation_id: ConversationPath,
    principal: NamedDependency[Principal],
    after: After = None,
    limit: Limit = 20,
    order: OrderBy = "desc",
    include: Include = None,
) -> dict[str, Any]:
    """Items in conversation order (``desc``, newest first, by default). A page ends on a
    message's last item, so ``after`` (the last id) goes on with the next message."""
    owner = principal.key_id
    row = await _owned(owner, conversation_id)
    after_seq = None
    if after is not None:
        found = await stored.get_item(owner, row, parse_id(IdKind.MESSAGE, after))
        if found is None:
            raise _missing_item(after)
        after_seq = found.seq
    descending = order == "desc"
    messages = await stored.page(
        owner, row, after_seq=after_seq, limit=limit + 1, descending=descending
    )
    data: list[dict[str, Any]] = []
    taken = 0
    for message in messages:
        rendered = items_of(message)
        if descending:
            rendered.reverse()
        # Whole messages only (every item of one shares its id), and at least one.
        if taken and len(data) + len(rendered) > limit:
            break
        data += rendered
        taken += 1
    return page(data, has_more=taken < len(messages))


@post(
    "/conversations/{conversation_id:str}/items",
    summary="Add items to a conversation (OpenAI Conversations API)",
    status_code=200,
    responses=errors(404, 409, 413, 415, policy=OPENAI),
)
async def create_items(
    conversation_id: ConversationPath,
    data: JSONBody[ItemsCreateBody],
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    include: Include = None,
) -> dict[str, Any]:
    """Up to 20 items, appended after the conversation's last message under its lock: a
    409 ``conversation_busy`` while a reply is being generated."""
    owner = principal.key_id
    row = await _owned(owner, conversation_id)
    turns = await turns_of(data.items, owner, settings_of(request.app.state).max_message_chars)
    added = await stored.append(owner, row, turns)
    return page([item for message in added for item in items_of(message)], has_more=False)


@get(
    "/conversations/{conversation_id:str}/items/{item_id:str}",
    summary="Retrieve an item (OpenAI Conversations API)",
    responses=errors(404, policy=OPENAI),
)
async def retrieve_item(
    conversation_id: ConversationPath,
    item_id: ItemPath,
    principal: NamedDependency[Principal],
    include: Include = None,
) -> dict[str, Any]:
    """The item ``item_id`` names: a message's first (its text, or its first call)."""
    owner = principal.key_id
    row = await _owned(owner, conversation_id)
    message = await stored.get_item(owner, row, parse_id(IdKind.MESSAGE, item_id))
    if message is None:
        raise _missing_item(item_id)
    return items_of(message)[0]


@delete(
    "/conversations/{conversation_id:str}/items/{item_id:str}",
    summary="Delete an item (OpenAI Conversations API)",
    status_code=200,
    responses=errors(404, 409, policy=OPENAI),
)
async def delete_item(
    conversation_id: ConversationPath, item_id: ItemPath, principal: NamedDependency[Principal]
) -> dict[str, Any]:
    """Deletes the message the item is (every item sharing its id); answers the
    conversation, as OpenAI does. A reply still being generated is a 409."""
    owner = principal.key_id
    row = await _owned(owner, conversation_id)
    message_id = parse_id(IdKind.MESSAGE, item_id)
    if await stored.get_item(owner, row, message_id) is None:
        raise _missing_item(item_id)
    await stored.delete_item(owner, row, message_id)
    return _conversation_out(await conversations.get_conversation(owner, row))


ROUTES = [
    create_conversation,
    retrieve_conversation,
    update_conversation,
    delete_conversation,
    list_items,
    create_items,
    retrieve_item,
    delete_item,
]
