"""Stored chat completions: a door's chat completions sent with ``store: true``, listed.

Every exchange is stored whatever ``store`` says (the conversation store is the product);
``store: true`` adds a ``stored_completion`` row, keyed by the reply's message id, so the
completion is listed the OpenAI way, with its ``metadata``. Everything else a stored
completion shows (its answer, usage, model, the messages it was asked with) is read from
the conversation's rows. Only completed replies are shown: a completion still being
generated, or one that failed, is not a stored completion (OpenAI stores none either).

Deleting one unlists it (its row goes); the exchange stays in its conversation, as every
exchange does, until the conversation (or the item, through the Conversations API) is
deleted. Every read is scoped to the owner in the same statement, so another key's
completion costs the lookup a missing one does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.conversations.items import item_of
from functions.core.db.engine import current_engine
from functions.core.db.sql import fetch, json_column

if TYPE_CHECKING:
    from collections.abc import Mapping

    from functions.core.messages.schemas import MessageOut

_COMPLETE = "m.status = 'complete'"
_REPLY = (
    "s.id, s.conversation, s.metadata, s.created_at AS stored_at, m.seq, m.content, "
    "m.tool_calls, m.model, m.prompt_tokens, m.completion_tokens, m.finish_reason, "
    "m.created_at"
)
_FROM = "FROM stored_completion s JOIN message m ON m.id = s.id "


class StoredCompletion(msgspec.Struct, frozen=True, kw_only=True):
    """A stored completion: its reply's fields and the request's ``metadata``."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    metadata: dict[str, Any]
    content: str
    tool_calls: list[dict[str, Any]] | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    created_at: datetime
    stored_at: datetime


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _completion(row: dict[str, Any]) -> StoredCompletion:
    return StoredCompletion(
        id=uuid.UUID(str(row["id"])),
        conversation_id=uuid.UUID(str(row["conversation"])),
        seq=int(row["seq"]),
        metadata=json_column(row["metadata"]) or {},
        content=row["content"],
        tool_calls=json_column(row["tool_calls"]),
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        finish_reason=row["finish_reason"],
        created_at=_utc(row["created_at"]),
        stored_at=_utc(row["stored_at"]),
    )


def _jsonb() -> str:
    return "::jsonb" if isinstance(current_engine(), PostgresEngine) else ""


async def store(
    owner: uuid.UUID,
    reply_id: uuid.UUID,
    conversation_id: uuid.UUID,
    metadata: Mapping[str, Any] | None,
) -> None:
    """List the completion answered by ``reply_id`` (again: nothing changes, so a send
    replayed by its Idempotency-Key stores one)."""
    await fetch(
        "INSERT INTO stored_completion (id, owner_key, conversation, metadata, created_at) "  # noqa: S608
        f"VALUES ({{}}, {{}}, {{}}, {{}}{_jsonb()}, {{}}) ON CONFLICT (id) DO NOTHING",
        reply_id,
        owner,
        conversation_id,
        msgspec.json.encode(dict(metadata or {})).decode(),
        datetime.now(UTC),
    )


async def get(owner: uuid.UUID, reply_id: uuid.UUID | None) -> StoredCompletion | None:
    """``owner``'s stored completion, or None (a malformed id, None, costs the same)."""
    rows = await fetch(
        f"SELECT {_REPLY} {_FROM}WHERE s.id = {{}} AND s.owner_key = {{}} AND {_COMPLETE}",
        reply_id or uuid.UUID(int=0),
        owner,
    )
    return _completion(rows[0]) if rows else None


def _metadata_filter(filters: Mapping[str, str]) -> tuple[str, list[Any]]:
    if not filters:
        return "", []
    if isinstance(current_engine(), PostgresEngine):
        # Containment: every pair given is in the completion's metadata.
        return "AND s.metadata @> {}::jsonb ", [msgspec.json.encode(dict(filters)).decode()]
    sql = ""
    args: list[Any] = []
    for key, value in filters.items():
        sql += (
            "AND EXISTS (SELECT 1 FROM json_each(s.metadata) j WHERE j.key = {} "
            "AND j.type = 'text' AND j.value = {}) "
        )
        args += [key, value]
    return sql, args


async def list_completions(
    owner: uuid.UUID,
    *,
    model: str | None,
    metadata: Mapping[str, str],
    after: StoredCompletion | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> list[StoredCompletion]:
    """Up to ``limit`` of ``owner``'s stored completions after ``after`` in ``order`` of
    storing: a row comparison on ``(created_at, id)``, so the key's index bounds the scan
    (filters by ``model`` and every ``metadata`` pair apply to what it reads)."""
    sql = f"SELECT {_REPLY} {_FROM}WHERE s.owner_key = {{}} AND {_COMPLETE} "
    args: list[Any] = [owner]
    if model is not None:
        sql += "AND m.model = {} "
        args.append(model)
    extra, extra_args = _metadata_filter(metadata)
    sql += extra
    args += extra_args
    comparison = ">" if order == "asc" else "<"
    if after is not None:
        sql += f"AND (s.created_at, s.id) {comparison} ({{}}, {{}}) "
        args += [after.stored_at, after.id]
    direction = "ASC" if order == "asc" else "DESC"
    sql += f"ORDER BY s.created_at {direction}, s.id {direction} LIMIT {{}}"
    rows = await fetch(sql, *args, limit)
    return [_completion(row) for row in rows]


async def update_metadata(
    owner: uuid.UUID, reply_id: uuid.UUID | None, metadata: Mapping[str, Any]
) -> StoredCompletion | None:
    """Replace a stored completion's ``metadata``; None when it is not ``owner``'s."""
    updated = await fetch(
        f"UPDATE stored_completion SET metadata = {{}}{_jsonb()} "  # noqa: S608
        "WHERE id = {} AND owner_key = {} RETURNING id",
        msgspec.json.encode(dict(metadata)).decode(),
        reply_id or uuid.UUID(int=0),
        owner,
    )
    if not updated:
        return None
    return await get(owner, reply_id)


async def delete(owner: uuid.UUID, reply_id: uuid.UUID | None) -> bool:
    """Unlist a stored completion (its exchange stays in its conversation)."""
    if await get(owner, reply_id) is None:
        return False
    deleted = await fetch(
        "DELETE FROM stored_completion WHERE id = {} AND owner_key = {} RETURNING id",
        reply_id,
        owner,
    )
    return bool(deleted)


_ITEM = (
    "id, conversation, seq, role, content, content_parts, tool_calls, tool_call_id, name, "
    "status, model, prompt_tokens, completion_tokens, finish_reason, created_at"
)


async def request_messages(completion: StoredCompletion) -> list[MessageOut]:
    """The messages the completion was asked with: its conversation's counted history
    before the reply (completed exchanges only, what the client had resent), then the
    turns stored with it. A conversation's history is read whole: a completion's request
    is what its client sent, and bounded by the model's context."""
    rows = await fetch(
        f"SELECT {_ITEM} FROM message WHERE conversation = {{}} AND seq < {{}} ORDER BY seq",  # noqa: S608
        completion.conversation_id,
        completion.seq,
    )
    counted: list[MessageOut] = []
    asking: list[MessageOut] = []
    for item in map(item_of, rows):
        if item.role == "assistant" and item.status != "complete":
            asking = []  # the reply failed or was cancelled: its question was not resent
        elif item.status != "complete":
            continue
        elif item.role == "assistant":
            counted += asking
            counted.append(item)
            asking = []
        else:
            asking.append(item)
    return counted + asking
