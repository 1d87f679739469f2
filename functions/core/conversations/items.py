"""A conversation's messages as items: appended outside a send, paged either way, deleted.

The Conversations API (and any door that shows stored turns one by one) reads and writes
the same ``message`` rows every send does. Two rules keep them whole:

- **Appending takes the conversation's lock, as a claim does.** The new turns get the next
  sequence numbers under the row lock (``UPDATE conversation ... RETURNING last_seq``), so
  they never interleave with a send's turns. While a reply is pending the append is a
  ``409 conversation_busy`` (with ``Retry-After``), as a second send would be; a pending
  reply whose own bound has passed, or whose process's lease lapsed, is retired as
  ``interrupted`` first, the claim's rule. A threaded conversation stays threaded: each
  appended turn is chained onto the last message's hash (``functions.core.threads``), so a
  client resending the history with these turns appends to it.
- **Deleting a message leaves a gap, never a renumbering**: ``seq`` is the order every
  reader pages by, and other processes may hold cursors into it. The chain hashes from the
  deleted message on are cleared, since each covered a history that held it: a resend of
  the old history (or of the new one) past that point branches into a new conversation
  instead of appending to one that no longer holds what it sent.
- **A conversation started with items is threaded** from its first turn (chained from
  the key's root), as the door's own conversations are. A pending reply is
  refused (409): its send is still writing it. ``conversation.last_seq`` (the chat API's
  ``message_count``) keeps counting the numbers handed out.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.conversations import service as conversations
from functions.core.conversations.service import not_found
from functions.core.db.engine import atomic, current_engine
from functions.core.db.sql import fetch, json_column
from functions.core.errors import ConflictError, NotFoundError
from functions.core.liveness.service import INTERRUPTED_MESSAGE
from functions.core.messages.claim import busy_error
from functions.core.messages.schemas import MessageOut, Turn, Usage
from functions.core.threads.chain import link, root

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.conversations.schemas import ConversationCreate, ConversationOut


class PendingItemError(ConflictError):
    code = "item_in_progress"


_ITEM = (
    "m.id, m.conversation, m.seq, m.role, m.content, m.content_parts, m.tool_calls, "
    "m.tool_call_id, m.name, m.status, m.model, m.prompt_tokens, m.completion_tokens, "
    "m.finish_reason, m.created_at"
)


def item_of(row: dict[str, Any]) -> MessageOut:
    """A message as the item readers see it (no configuration, timings or errors: what
    an item shows)."""
    created = row["created_at"]
    prompt, completion = row["prompt_tokens"], row["completion_tokens"]
    return MessageOut(
        id=uuid.UUID(str(row["id"])),
        conversation_id=uuid.UUID(str(row["conversation"])),
        seq=int(row["seq"]),
        role=row["role"],
        content=row["content"],
        content_parts=json_column(row["content_parts"]),
        tool_calls=json_column(row["tool_calls"]),
        tool_call_id=row["tool_call_id"],
        name=row["name"],
        status=row["status"],
        model=row["model"],
        usage=None
        if prompt is None or completion is None
        else Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ),
        finish_reason=row["finish_reason"],
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )


async def owns(owner: uuid.UUID, conversation_id: uuid.UUID) -> bool:
    rows = await fetch(
        "SELECT 1 AS owned FROM conversation WHERE id = {} AND owner_key = {}",
        conversation_id,
        owner,
    )
    return bool(rows)


async def page(
    owner: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    after_seq: int | None,
    limit: int,
    descending: bool,
) -> list[MessageOut]:
    """Up to ``limit`` messages after ``after_seq`` (before it, ``descending``): a range of
    the ``(conversation, seq)`` index, whatever the depth of the page. The owner is
    checked in the same statement; the caller checks the conversation exists first."""
    if descending:
        bound = "AND m.seq < {} " if after_seq is not None else ""
        order = "DESC"
    else:
        bound = "AND m.seq > {} " if after_seq is not None else ""
        order = "ASC"
    sql = (
        f"SELECT {_ITEM} FROM message m JOIN conversation c ON c.id = m.conversation "  # noqa: S608
        f"WHERE m.conversation = {{}} AND c.owner_key = {{}} {bound}"
        f"ORDER BY m.seq {order} LIMIT {{}}"
    )
    args: list[Any] = [conversation_id, owner]
    if after_seq is not None:
        args.append(after_seq)
    rows = await fetch(sql, *args, limit)
    return [item_of(row) for row in rows]


async def get_item(
    owner: uuid.UUID, conversation_id: uuid.UUID | None, message_id: uuid.UUID | None
) -> MessageOut | None:
    """The message if it is in ``conversation_id`` (any of the owner's, when None) and the
    conversation is ``owner``'s; None otherwise (a malformed id, None, costs the same)."""
    rows = await fetch(
        f"SELECT {_ITEM} FROM message m JOIN conversation c ON c.id = m.conversation "  # noqa: S608
        "WHERE m.id = {} AND c.owner_key = {}",
        message_id or uuid.UUID(int=0),
        owner,
    )
    if not rows:
        return None
    item = item_of(rows[0])
    if conversation_id is not None and item.conversation_id != conversation_id:
        return None
    return item


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


async def _retire_pending(conversation_id: uuid.UUID, seq: int, now: datetime) -> None:
    """A pending reply at ``seq`` is busy (409) unless its bound passed or its process's
    lease lapsed: then it is retired as interrupted, as the claim retires it. One with no
    bound of its own (stored before there was one) is left to the sweeper."""
    pending = await fetch(
        "SELECT id, stale_after, owner_instance, EXISTS (SELECT 1 FROM process_lease "
        "WHERE id = message.owner_instance AND expires_at > {}) AS owner_alive "
        "FROM message WHERE conversation = {} AND seq = {} AND status = 'pending'",
        now,
        conversation_id,
        seq,
    )
    if not pending:
        return
    row = pending[0]
    bound = row["stale_after"]
    if bound is not None and bound.tzinfo is None:
        bound = bound.replace(tzinfo=UTC)
    young = bound is None or bound > now
    if young and (row["owner_instance"] is None or row["owner_alive"]):
        raise busy_error(conversation_id)
    await fetch(
        "UPDATE message SET status = 'failed', error_code = 'interrupted', "
        "error_message = {}, completed_at = {} WHERE id = {}",
        INTERRUPTED_MESSAGE,
        now,
        row["id"],
    )


async def append(
    owner: uuid.UUID, conversation_id: uuid.UUID, turns: Sequence[Turn]
) -> list[MessageOut]:
    """Store ``turns`` at the end of the conversation, under its lock (see the module
    docstring): a 404 when it is not ``owner``'s, a 409 while a reply is pending."""
    if not turns:
        return []
    now = datetime.now(UTC)
    postgres = isinstance(current_engine(), PostgresEngine)
    ids = [uuid.uuid4() for _ in turns]
    async with atomic():
        # The UPDATE takes the row lock the claim takes: sends and appends queue on it.
        bumped = await fetch(
            "UPDATE conversation SET last_seq = last_seq + {}, updated_at = {} "
            "WHERE id = {} AND owner_key = {} RETURNING last_seq",
            len(turns),
            now,
            conversation_id,
            owner,
        )
        if not bumped:
            raise not_found(conversation_id)
        last = int(bumped[0]["last_seq"]) - len(turns)
        await _retire_pending(conversation_id, last, now)
        previous = await fetch(
            "SELECT chain_hash FROM message WHERE conversation = {} AND seq = {} "
            "AND status = 'complete'",
            conversation_id,
            last,
        )
        chain: bytes | None = None
        if last == 0:
            chain = root(owner)  # a new conversation's history threads as a door's would
        elif previous and previous[0]["chain_hash"] is not None:
            chain = bytes(previous[0]["chain_hash"])
        jsonb = "::jsonb" if postgres else ""
        values: list[Any] = []
        for index, (turn, turn_id) in enumerate(zip(turns, ids, strict=True), start=1):
            chain = None if chain is None else link(chain, turn)
            values += [
                turn_id,
                conversation_id,
                last + index,
                turn.role,
                turn.content,
                _json(turn.parts),
                _json(turn.tool_calls),
                turn.tool_call_id,
                turn.name,
                now,
                now,
                chain,
            ]
        row = (
            f"({{}}, {{}}, {{}}, {{}}, {{}}, {{}}{jsonb}, {{}}{jsonb}, {{}}, {{}}, 'complete', "
            "{}, {}, {})"
        )
        # Only placeholders are joined in; every value goes in as a parameter.
        inserted = await fetch(
            "INSERT INTO message (id, conversation, seq, role, content, content_parts, "
            "tool_calls, tool_call_id, name, status, created_at, completed_at, chain_hash) "
            "VALUES " + ", ".join([row] * len(turns)) + " RETURNING " + _ITEM.replace("m.", ""),
            *values,
        )
    return sorted((item_of(row) for row in inserted), key=lambda item: item.seq)


async def delete_item(
    owner: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID | None
) -> None:
    """Delete one message of ``owner``'s conversation (see the module docstring): a 404
    when either is not theirs, a 409 for a reply still being generated."""
    async with atomic():
        # The conversation's lock first, as a claim takes it: no send stores meanwhile.
        locked = await fetch(
            "UPDATE conversation SET updated_at = {} WHERE id = {} AND owner_key = {} RETURNING id",
            datetime.now(UTC),
            conversation_id,
            owner,
        )
        if not locked:
            raise not_found(conversation_id)
        item = await get_item(owner, conversation_id, message_id)
        if item is None:
            raise NotFoundError(
                f"item not found in conversation {conversation_id}",
                details={"conversation_id": str(conversation_id)},
            )
        if item.status == "pending":
            raise PendingItemError(
                "this reply is still being generated; delete it once it has finished",
                details={"conversation_id": str(conversation_id)},
            )
        await fetch("DELETE FROM message WHERE id = {}", item.id)
        await fetch(
            "UPDATE message SET chain_hash = NULL WHERE conversation = {} AND seq > {} "
            "AND chain_hash IS NOT NULL",
            conversation_id,
            item.seq,
        )
        # A stored chat completion answered by this message is gone with it.
        await fetch("DELETE FROM stored_completion WHERE id = {}", item.id)


async def start(
    owner: uuid.UUID, data: ConversationCreate, turns: Sequence[Turn]
) -> tuple[ConversationOut, list[MessageOut]]:
    """A new conversation of ``owner`` holding ``turns``, all or nothing. Its configuration
    is the default one when there is a default (a chat API send can continue it), none
    otherwise."""
    async with atomic():
        conversation = await conversations.create_conversation(owner, data)
        stored = await append(owner, conversation.id, turns)
    return conversation, stored
