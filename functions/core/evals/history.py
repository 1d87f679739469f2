"""Datasets from real traffic: each stored reply, with what was asked, becomes an item.

For every completed reply of a key's conversations (optionally: produced by one
configuration, since a time) the item is the history as the prompt rule counts it
(``chat.prompt.counted_history``: only completed exchanges; a failed or cancelled reply is
left out with the turns that asked for it), then the turn(s) that asked; the stored reply
is ``expected``. Run through a candidate configuration, the items show what it would have
answered to what users actually asked. The configuration's system prompt is not part of an
item: the configuration under test supplies its own.

Exchanges with tool calls are skipped (a dataset item is a plain chat), and counted; so
are those holding a NUL (SQLite stored them before the API refused them), which a dataset
refuses as the API does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from functions.core.chat.prompt import counted_history
from functions.core.db.tables import Message
from functions.core.errors import InvalidInputError
from functions.core.evals.schemas import DatasetItem, DatasetMessage
from functions.core.messages import service as messages
from functions.core.messages.schemas import StoredTurn, Turn
from functions.core.schemas import InputValueError

if TYPE_CHECKING:
    from functions.core.messages.schemas import MessageOut

MAX_ITEMS = 100_000


class HistoryDataset(msgspec.Struct, kw_only=True):
    """Items built from history, and how many replies could not become one."""

    items: list[DatasetItem]
    skipped: int


def _stored(message: MessageOut) -> StoredTurn:
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


async def _conversation(owner: uuid.UUID, conversation_id: uuid.UUID) -> list[StoredTurn]:
    stored: list[StoredTurn] = []
    cursor: str | None = None
    while True:
        page = await messages.list_messages(owner, conversation_id, limit=500, cursor=cursor)
        stored += [_stored(message) for message in page.data]
        if page.next_cursor is None:
            return stored
        cursor = page.next_cursor


def _plain(turns: list[Turn]) -> bool:
    """A chat a dataset item can hold: no tool calling, a system turn only first."""
    return all(
        turn.role != "tool"
        and not turn.tool_calls
        and (turn.role not in ("system", "developer") or index == 0)
        for index, turn in enumerate(turns)
    )


def item_from(
    stored: list[StoredTurn], reply_seq: int, conversation_id: uuid.UUID
) -> DatasetItem | None:
    """The item for the reply at ``reply_seq``: the counted history before it, then what
    asked for it; None when that is not a plain chat, or holds what a dataset may not (a
    NUL that SQLite stored before the API refused it)."""
    counted = counted_history([turn for turn in stored if turn.seq <= reply_seq])
    if len(counted) < 2 or counted[-1].role != "assistant":
        return None
    asked, reply = counted[:-1], counted[-1]
    if not _plain(asked) or asked[-1].role != "user":
        return None
    try:
        return DatasetItem(
            id=f"{conversation_id}/{reply_seq}",
            messages=[
                DatasetMessage(
                    role=turn.role,
                    content=turn.parts if turn.parts is not None else turn.content,
                    name=turn.name,
                )
                for turn in asked
            ],
            expected=reply.content,
        )
    except InputValueError:
        return None


async def dataset_from_history(
    owner: uuid.UUID,
    *,
    config: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> HistoryDataset:
    """Up to ``limit`` items from ``owner``'s completed replies (oldest first), produced by
    configuration ``config`` (any version) if named, created at or after ``since``."""
    if not 1 <= limit <= MAX_ITEMS:
        raise InvalidInputError(
            f"limit must be between 1 and {MAX_ITEMS}", details={"field": "limit"}
        )
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    query = Message.select(
        Message.id,
        Message.conversation,
        Message.seq,
        Message.created_at,
        Message.llm_config.name,
        Message.llm_config.version,
    ).where(
        (Message.conversation.owner_key == owner)
        & (Message.role == "assistant")
        & (Message.status == "complete")
    )
    if config is not None:
        query = query.where(Message.llm_config.name == config)
    if since is not None:
        query = query.where(Message.created_at >= since)
    replies = await query.order_by(Message.created_at, Message.id).limit(limit)
    conversations: dict[uuid.UUID, list[StoredTurn]] = {}
    items: list[DatasetItem] = []
    skipped = 0
    for reply in replies:
        conversation_id = _uuid(reply["conversation"])
        if conversation_id not in conversations:
            conversations[conversation_id] = await _conversation(owner, conversation_id)
        item = item_from(conversations[conversation_id], reply["seq"], conversation_id)
        if item is None:
            skipped += 1
            continue
        made_by = reply["llm_config.name"]
        created: datetime = reply["created_at"]
        metadata: dict[str, object] = {
            "conversation_id": str(conversation_id),
            "message_id": str(reply["id"]),
            "created_at": created.isoformat() if isinstance(created, datetime) else str(created),
        }
        if made_by is not None:
            metadata["config"] = f"{made_by}@{reply['llm_config.version']}"
        items.append(msgspec.structs.replace(item, metadata=metadata))
    return HistoryDataset(items=items, skipped=skipped)


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
