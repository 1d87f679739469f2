"""Responses on the conversation store: a response is the reply (assistant message) that
answered it, its input items the turns stored with it, its request on the reply's row.

What OpenAI's Responses API keeps on its side is already here: a stored response is one
exchange of a conversation (its input turns, then its reply), so every door reads it the
same way. The fields its API shows back (``instructions``, ``tools``, ``metadata``, ...)
are the reply row's ``api_request``; nothing is copied into a second table.

Every read is by primary key and owner in one statement: a response of another key costs
the same lookup as one that does not exist, and ``previous_response_id`` is found by
that index, whatever the length of the chain behind it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.chat.prompt import counted_history
from functions.core.db.engine import atomic, current_engine
from functions.core.db.sql import fetch, json_column
from functions.core.errors import ConflictError, NotFoundError
from functions.core.messages.schemas import MessageOut, StoredTurn, Turn
from functions.core.messages.service import message_from_row

if TYPE_CHECKING:
    from collections.abc import Sequence

NIL = uuid.UUID(int=0)
# A message's columns as ``messages.service`` reads them (``m``: the message, ``l``: its
# configuration version).
_MESSAGE = (
    "m.id, m.conversation, m.seq, m.role, m.content, m.content_parts, m.tool_calls, "
    'm.tool_call_id, m.name, m.status, m.llm_config, l.name AS "llm_config.name", '
    'l.version AS "llm_config.version", m.model, m.prompt_tokens, m.completion_tokens, '
    "m.latency_ms, m.ttft_ms, m.finish_reason, m.error_code, m.error_message, "
    "m.upstream_request_id, m.created_at, m.completed_at"
)
_FROM = "FROM message m JOIN conversation c ON c.id = m.conversation "
_CONFIG = "LEFT JOIN llm_config l ON l.id = m.llm_config "
# One row by primary key, the owner checked in the same statement; whether a reply after
# it was answered (or is being: anything but failed or cancelled), for where a
# continuation goes.
_REPLY = (
    f"SELECT {_MESSAGE}, m.api_request, c.last_seq, EXISTS (SELECT 1 FROM message a "  # noqa: S608
    "WHERE a.conversation = m.conversation AND a.seq > m.seq AND a.role = 'assistant' "
    "AND a.status NOT IN ('failed', 'cancelled')) AS answered_after "
    f"{_FROM}{_CONFIG}WHERE m.id = {{}} AND c.owner_key = {{}} AND m.role = 'assistant' "
    "AND m.api_request IS NOT NULL"
)


# What a continuation needs of the response it continues, and no more: the lookup runs
# on every ``previous_response_id``, so it reads six columns, not the reply whole.
# Whether a later reply was answered is asked only when the reply is not the last message.
_PREVIOUS = (
    "SELECT m.conversation, m.seq, m.status, c.last_seq, CASE WHEN m.seq = c.last_seq "  # noqa: S608
    "THEN 0 ELSE (SELECT COUNT(*) FROM (SELECT 1 FROM message a WHERE a.conversation = "
    "m.conversation AND a.seq > m.seq AND a.role = 'assistant' AND a.status NOT IN "
    "('failed', 'cancelled') LIMIT 1) AS later) END AS answered_after "
    f"{_FROM}WHERE m.id = {{}} AND c.owner_key = {{}} AND m.role = 'assistant' "
    "AND m.api_request IS NOT NULL"
)


class Previous(msgspec.Struct, frozen=True, kw_only=True):
    """Where a response stands in its conversation, for one that continues it:
    ``last_seq`` is the conversation's last message, ``answered_after`` whether a later
    reply there completed or is being generated."""

    reply_id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    status: str
    last_seq: int
    answered_after: bool


async def previous_of(owner: uuid.UUID, reply_id: uuid.UUID | None) -> Previous | None:
    """The response ``previous_response_id`` names, if it is ``owner``'s: one lookup by
    primary key, whatever the length of the chain behind it."""
    rows = await fetch(_PREVIOUS, reply_id or NIL, owner)
    if not rows:
        return None
    row = rows[0]
    return Previous(
        reply_id=reply_id or NIL,
        conversation_id=uuid.UUID(str(row["conversation"])),
        seq=int(row["seq"]),
        status=str(row["status"]),
        last_seq=int(row["last_seq"]),
        answered_after=bool(row["answered_after"]),
    )


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A response as stored: its reply, the request its API shows back, and where it
    stands in its conversation (``last_seq``: the conversation's last message;
    ``answered_after``: a later reply there completed or is being generated)."""

    reply: MessageOut
    request: dict[str, Any]
    last_seq: int
    answered_after: bool

    @property
    def input_count(self) -> int:
        """How many turns were stored with the reply as its input items."""
        count = self.request.get("input_count")
        return count if isinstance(count, int) and count >= 0 else 0


def not_found(response_id: str) -> NotFoundError:
    return NotFoundError(
        f"Response with id '{response_id}' not found.", details={"id": response_id}
    )


async def get_response(owner: uuid.UUID, reply_id: uuid.UUID | None) -> StoredResponse | None:
    """The response answered by ``reply_id`` if it is ``owner``'s (None otherwise; a
    malformed id, None, costs the same lookup)."""
    rows = await fetch(_REPLY, reply_id or NIL, owner)
    if not rows:
        return None
    row = rows[0]
    return StoredResponse(
        reply=message_from_row(row),
        request=json_column(row["api_request"]) or {},
        last_seq=int(row["last_seq"]),
        answered_after=bool(row["answered_after"]),
    )


async def record_request(reply_id: uuid.UUID, request: dict[str, Any]) -> None:
    """Write what the API shows back about the request onto its reply (once, when the
    reply is claimed)."""
    encoded = msgspec.json.encode(request).decode()
    if isinstance(current_engine(), PostgresEngine):
        await fetch("UPDATE message SET api_request = {}::jsonb WHERE id = {}", encoded, reply_id)
    else:
        await fetch("UPDATE message SET api_request = {} WHERE id = {}", encoded, reply_id)


_HISTORY = (
    "SELECT seq, role, content, content_parts, tool_calls, tool_call_id, name, status "
    "FROM message WHERE conversation = {} AND seq <= {} ORDER BY seq DESC LIMIT {}"
)


async def history_through(conversation_id: uuid.UUID, seq: int, limit: int) -> list[Turn]:
    """The counted history (completed exchanges, the prompt rule's) of a conversation up
    to and including message ``seq``, from its newest ``limit`` messages at most."""
    rows = await fetch(_HISTORY, conversation_id, seq, limit)
    stored = [
        StoredTurn(
            seq=row["seq"],
            status=row["status"],
            turn=Turn(
                role=row["role"],
                content=row["content"],
                parts=json_column(row["content_parts"]),
                tool_calls=json_column(row["tool_calls"]),
                tool_call_id=row["tool_call_id"],
                name=row["name"],
            ),
        )
        for row in reversed(rows)
    ]
    return counted_history(stored)


async def messages_of(owner: uuid.UUID, message_ids: Sequence[uuid.UUID]) -> list[MessageOut]:
    """The messages among ``message_ids`` that are ``owner``'s (one statement; the
    caller compares what came back with what it asked for)."""
    if not message_ids:
        return []
    marks = ", ".join(["{}"] * len(message_ids))
    rows = await fetch(
        f"SELECT {_MESSAGE} {_FROM}{_CONFIG}WHERE m.id IN ({marks}) AND c.owner_key = {{}}",
        *message_ids,
        owner,
    )
    return [message_from_row(row) for row in rows]


async def input_messages(
    stored: StoredResponse,
    *,
    after_seq: int | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> list[MessageOut]:
    """A page of the response's input items (the turns stored with its reply), by
    ``seq`` after ``after_seq`` in ``order``: a range of the (conversation, seq) index."""
    reply = stored.reply
    first = reply.seq - stored.input_count
    if order == "asc":
        low = first if after_seq is None else max(first, after_seq + 1)
        high = reply.seq - 1
        direction = "ASC"
    else:
        low = first
        high = reply.seq - 1 if after_seq is None else min(reply.seq - 1, after_seq - 1)
        direction = "DESC"
    rows = await fetch(
        f"SELECT {_MESSAGE} FROM message m {_CONFIG}WHERE m.conversation = {{}} "  # noqa: S608
        f"AND m.seq >= {{}} AND m.seq <= {{}} ORDER BY m.seq {direction} LIMIT {{}}",
        reply.conversation_id,
        low,
        high,
        limit,
    )
    return [message_from_row(row) for row in rows]


class ResponseInProgressError(ConflictError):
    code = "response_in_progress"


async def delete_response(owner: uuid.UUID, reply_id: uuid.UUID | None, shown_id: str) -> None:
    """Delete a response: its reply and the input turns stored with it. The exchanges
    before it stay (other responses' history), a later response keeps its own prompt as it
    was sent; a conversation left with no message goes too. One in progress is a 409."""
    async with atomic():
        stored = await get_response(owner, reply_id)
        if stored is None:
            raise not_found(shown_id)
        reply = stored.reply
        if reply.status == "pending":
            raise ResponseInProgressError(
                f"response {shown_id} is still in progress; delete it once it has finished",
                details={"id": shown_id},
            )
        await fetch(
            "DELETE FROM message WHERE conversation = {} AND seq >= {} AND seq <= {}",
            reply.conversation_id,
            reply.seq - stored.input_count,
            reply.seq,
        )
        await fetch(
            "DELETE FROM conversation WHERE id = {} AND owner_key = {} AND NOT EXISTS "
            "(SELECT 1 FROM message WHERE conversation = {})",
            reply.conversation_id,
            owner,
            reply.conversation_id,
        )
