"""Conversations, always scoped to the owning key.

Every query filters on the owner, so another key's conversation is indistinguishable from
one that does not exist (404, never 403).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET
from piccolo.columns.combination import WhereRaw

from functions.core.configs import service as configs
from functions.core.conversations.schemas import (
    ConversationCreate,
    ConversationOut,
    ConversationUpdate,
)
from functions.core.db.tables import Conversation
from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.schemas import Page, bounded_page, decode_cursor, encode_cursor

MAX_METADATA_BYTES = 16 * 1024
MAX_PAGE_SIZE = 200

_COLUMNS = (
    Conversation.id,
    Conversation.title,
    Conversation.config_name.as_alias("config"),
    Conversation.metadata,
    Conversation.last_seq.as_alias("message_count"),
    Conversation.created_at,
    Conversation.updated_at,
    Conversation.forked_from_conversation_id,
    Conversation.forked_from_message_id,
)


def not_found(conversation_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(
        f"conversation {conversation_id} not found", details={"id": str(conversation_id)}
    )


def _check_metadata(metadata: dict[str, Any]) -> None:
    size = len(msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(
            f"metadata is {size} bytes encoded; the limit is {MAX_METADATA_BYTES}",
            details={"field": "metadata"},
        )


async def _config_name(name: str | None, *, required: bool) -> str | None:
    """Validate a named config, or pick the current default's name.

    With no default, ``required`` makes that a 400 naming ``config``; otherwise (a send
    to a served model, which needs no configuration) the conversation has none.
    """
    if name is not None:
        return (await configs.resolve_config(name)).name
    default = await configs.get_default_config()
    if default is None and required:
        raise configs.no_default_error()
    return None if default is None else default.name


async def create_conversation(
    owner: uuid.UUID, data: ConversationCreate, *, require_config: bool = False
) -> ConversationOut:
    """Start a conversation on ``data.config`` or the default configuration.

    ``require_config`` (the HTTP door): with neither, refuse instead of starting a
    conversation no send could use.
    """
    _check_metadata(data.metadata)
    row = Conversation(
        owner_key=owner,
        title=data.title,
        config_name=await _config_name(data.config, required=require_config),
        metadata=data.metadata,
    )
    await row.save()
    return await get_conversation(owner, uuid.UUID(str(row.id)))


async def get_conversation(owner: uuid.UUID, conversation_id: uuid.UUID) -> ConversationOut:
    row = (
        await Conversation.select(*_COLUMNS)
        .where((Conversation.id == conversation_id) & (Conversation.owner_key == owner))
        .first()
        .output(load_json=True)
    )
    if row is None:
        raise not_found(conversation_id)
    return msgspec.convert(row, ConversationOut)


async def list_conversations(
    owner: uuid.UUID,
    *,
    limit: int = 50,
    cursor: str | None = None,
    max_bytes: int | None = None,
) -> Page[ConversationOut]:
    """The owner's conversations, most recently active first: at most ``limit``, and when
    ``max_bytes`` is given, at most about that much JSON (always at least one).

    A row is bounded (title, metadata), so ``limit + 1`` rows are read whole; the page is
    then cut by what it sends (:func:`bounded_page`)."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    query = Conversation.select(*_COLUMNS).where(Conversation.owner_key == owner)
    if cursor is not None:
        updated_at, last_id = decode_cursor(cursor, "conversations", tuple[datetime, uuid.UUID])
        # A row comparison, so the index on (owner_key, updated_at, id) bounds the scan;
        # the same condition as an OR would be a filter, and deep pages quadratic.
        query = query.where(WhereRaw("(updated_at, id) < ({}, {})", updated_at, last_id))
    rows = (
        await query.order_by(Conversation.updated_at, Conversation.id, ascending=False)
        .limit(limit + 1)
        .output(load_json=True)
    )
    items = msgspec.convert(rows[:limit], list[ConversationOut])
    more = len(rows) > limit
    if max_bytes is not None:
        return bounded_page(items, more=more, max_bytes=max_bytes, cursor=_cursor)
    return Page(data=items, next_cursor=_cursor(items[-1]) if more else None)


def _cursor(last: ConversationOut) -> str:
    return encode_cursor("conversations", last.updated_at, last.id)


async def update_conversation(
    owner: uuid.UUID, conversation_id: uuid.UUID, data: ConversationUpdate
) -> ConversationOut:
    values: dict[Any, Any] = {Conversation.updated_at: datetime.now(UTC)}
    if data.title is not UNSET:
        values[Conversation.title] = data.title
    if data.metadata is not UNSET:
        _check_metadata(data.metadata)
        values[Conversation.metadata] = data.metadata
    if data.config is not UNSET:
        values[Conversation.config_name] = await _config_name(data.config, required=True)
    updated = (
        await Conversation.update(values)
        .where((Conversation.id == conversation_id) & (Conversation.owner_key == owner))
        .returning(Conversation.id)
    )
    if not updated:
        raise not_found(conversation_id)
    return await get_conversation(owner, conversation_id)


async def delete_conversation(owner: uuid.UUID, conversation_id: uuid.UUID) -> None:
    """Delete a conversation and, by cascade, all its messages."""
    deleted = (
        await Conversation.delete()
        .where((Conversation.id == conversation_id) & (Conversation.owner_key == owner))
        .returning(Conversation.id)
    )
    if not deleted:
        raise not_found(conversation_id)
