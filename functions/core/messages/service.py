"""Messages and the write path that never loses one.

A send is two short transactions around the model call:

1. :func:`begin_exchange` locks the conversation row (bumping ``last_seq`` hands out the
   next two sequence numbers), stores the user message and a ``pending`` assistant message,
   and reads the history the model will see.
2. :func:`finish_exchange` writes the outcome (``complete``, ``failed`` or ``cancelled``)
   onto that assistant message.

Nothing is held open while the model runs. A second send while a reply is pending gets
:class:`ConversationBusyError`; callers wait and retry, so histories never interleave.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigOut
from functions.core.conversations.service import not_found
from functions.core.db.engine import current_engine, write_transaction
from functions.core.db.sql import fetch
from functions.core.db.tables import Conversation, Message
from functions.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SwitchboardError,
)
from functions.core.messages.schemas import (
    ChatTurn,
    ConfigRef,
    Exchange,
    MessageError,
    MessageOut,
    ReplyOutcome,
    Usage,
)
from functions.core.schemas import Page

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MAX_PAGE_SIZE = 500
# A pending reply older than this is from a process that died mid-send; it no longer
# blocks the conversation and is marked failed.
STALE_PENDING_AFTER = timedelta(minutes=15)

_COLUMNS = (
    Message.id,
    Message.conversation,
    Message.seq,
    Message.role,
    Message.content,
    Message.status,
    Message.llm_config,
    Message.llm_config.name,
    Message.llm_config.version,
    Message.model,
    Message.prompt_tokens,
    Message.completion_tokens,
    Message.latency_ms,
    Message.ttft_ms,
    Message.finish_reason,
    Message.error_code,
    Message.error_message,
    Message.upstream_request_id,
    Message.created_at,
    Message.completed_at,
)


class ConversationBusyError(ConflictError):
    code = "conversation_busy"


def _to_out(row: dict[str, Any]) -> MessageOut:
    config = None
    if row["llm_config"] is not None:
        config = ConfigRef(
            id=row["llm_config"],
            name=row["llm_config.name"],
            version=row["llm_config.version"],
        )
    usage = None
    if row["prompt_tokens"] is not None and row["completion_tokens"] is not None:
        usage = Usage(
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            total_tokens=row["prompt_tokens"] + row["completion_tokens"],
        )
    error = None
    if row["error_code"] is not None:
        error = MessageError(code=row["error_code"], message=row["error_message"] or "")
    return MessageOut(
        id=row["id"],
        conversation_id=row["conversation"],
        seq=row["seq"],
        role=row["role"],
        content=row["content"],
        status=row["status"],
        config=config,
        model=row["model"],
        usage=usage,
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        finish_reason=row["finish_reason"],
        error=error,
        upstream_request_id=row["upstream_request_id"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
    )


async def get_message(message_id: uuid.UUID) -> MessageOut:
    row = await Message.select(*_COLUMNS).where(Message.id == message_id).first()
    if row is None:
        raise NotFoundError(f"message {message_id} not found")
    return _to_out(row)


async def list_messages(
    owner: uuid.UUID, conversation_id: uuid.UUID, *, limit: int = 100, after: int = 0
) -> Page[MessageOut]:
    """A conversation's messages in sequence order, those with ``seq > after``."""
    owned = await Conversation.exists().where(
        (Conversation.id == conversation_id) & (Conversation.owner_key == owner)
    )
    if not owned:
        raise not_found(conversation_id)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    rows = (
        await Message.select(*_COLUMNS)
        .where((Message.conversation == conversation_id) & (Message.seq > after))
        .order_by(Message.seq)
        .limit(limit + 1)
    )
    items = [_to_out(row) for row in rows[:limit]]
    next_cursor = str(items[-1].seq) if len(rows) > limit else None
    return Page(data=items, next_cursor=next_cursor)


_MESSAGE_COLUMNS = (
    "id, conversation, seq, role, content, status, llm_config, model, prompt_tokens, "
    "completion_tokens, latency_ms, ttft_ms, finish_reason, error_code, error_message, "
    "upstream_request_id, created_at, completed_at"
)


# Constant column names; every value goes in as a parameter.
_FINISH_SQL = (
    "UPDATE message SET status = {}, content = {}, model = COALESCE({}, model), "  # noqa: S608
    "prompt_tokens = {}, completion_tokens = {}, latency_ms = {}, ttft_ms = {}, "
    "finish_reason = {}, error_code = {}, error_message = {}, upstream_request_id = {}, "
    "completed_at = {} WHERE id = {} AND status = 'pending' RETURNING " + _MESSAGE_COLUMNS
)


async def _earlier_turns(
    conversation_id: uuid.UUID, user_seq: int, window: int | None
) -> tuple[list[ChatTurn], dict[str, Any] | None]:
    """The complete messages before ``user_seq`` (newest ``window`` of them), and the
    previous reply if it is still pending.

    Sends are serialised, so only the newest reply (``user_seq - 1``) can be pending: every
    send checks its predecessor before it starts. One query answers both questions.
    """
    sql = (
        "SELECT id, seq, role, content, status, created_at FROM message "
        "WHERE conversation = {} AND seq < {} AND (status = 'complete' OR seq = {}) "
        "ORDER BY seq DESC"
    )
    args: list[Any] = [conversation_id, user_seq, user_seq - 1]
    if window is not None:
        sql += " LIMIT {}"
        args.append(window + 1)
    rows = await fetch(sql, *args)
    pending = rows[0] if rows and rows[0]["status"] == "pending" else None
    turns = [
        ChatTurn(role=row["role"], content=row["content"])
        for row in reversed(rows)
        if row["status"] == "complete"
    ]
    if window is not None:
        turns = turns[-window:] if window else []
    return turns, pending


class _Send(NamedTuple):
    """One send's identity: who, where, what, and the ids and time it will be stored with."""

    owner: uuid.UUID
    conversation_id: uuid.UUID
    content: str
    user_id: uuid.UUID
    reply_id: uuid.UUID
    now: datetime


class _Claim(msgspec.Struct):
    """The first half of a send, as either claim strategy returns it."""

    last_seq: int
    config: LLMConfigOut
    history: list[ChatTurn]


async def begin_exchange(owner: uuid.UUID, conversation_id: uuid.UUID, content: str) -> Exchange:
    """Store the user's message and a pending reply in one transaction.

    The reply uses the latest version of the conversation's config (or the default).
    Raises :class:`ConversationBusyError` while another reply in the conversation is pending.
    """
    if not content.strip():
        raise InvalidInputError("content is empty", details={"field": "content"})
    now = datetime.now(UTC)
    user_id, reply_id = uuid.uuid4(), uuid.uuid4()
    claim_with = (
        _claim_on_postgres if isinstance(current_engine(), PostgresEngine) else _claim_stepwise
    )
    claim = await claim_with(_Send(owner, conversation_id, content, user_id, reply_id, now))
    config = claim.config
    user = MessageOut(
        id=user_id,
        conversation_id=conversation_id,
        seq=claim.last_seq - 1,
        role="user",
        content=content,
        status="complete",
        created_at=now,
        completed_at=now,
    )
    reply = MessageOut(
        id=reply_id,
        conversation_id=conversation_id,
        seq=claim.last_seq,
        role="assistant",
        content="",
        status="pending",
        created_at=now,
        config=ConfigRef(id=config.id, name=config.name, version=config.version),
        model=config.model,
    )
    history = [*claim.history, ChatTurn(role="user", content=content)]
    if config.history_window is not None:
        history = history[-config.history_window :]
    if config.system_prompt:
        history.insert(0, ChatTurn(role="system", content=config.system_prompt))
    return Exchange(user_message=user, assistant_message=reply, history=history, config=config)


async def _claim_on_postgres(send: _Send) -> _Claim:
    """One round trip: the ``switchboard_begin_exchange`` function (see its migration)."""
    try:
        rows = await fetch(
            "SELECT switchboard_begin_exchange({}, {}, {}, {}, {}, {}, {}) AS claim",
            send.conversation_id,
            send.owner,
            send.content,
            send.user_id,
            send.reply_id,
            send.now,
            send.now - STALE_PENDING_AFTER,
            savepoint=True,
        )
    except asyncpg.exceptions.RaiseError as exc:
        raise _claim_error(str(exc), send.conversation_id) from None
    return _claim_decoder.decode(rows[0]["claim"])


_claim_decoder = msgspec.json.Decoder(_Claim)


def _claim_error(raised: str, conversation_id: uuid.UUID) -> SwitchboardError:
    _, reason, name = [*raised.split(":", 2), "", ""][:3]
    if reason == "busy":
        return _busy(conversation_id)
    if reason == "no_default_config":
        return configs.no_default_error()
    if reason == "config_not_found":
        return configs.missing_error(name)
    if reason == "config_archived":
        return configs.archived_error(name)
    return not_found(conversation_id)


async def _claim_stepwise(send: _Send) -> _Claim:
    """The same steps as the PostgreSQL function, one statement at a time (SQLite)."""
    owner, conversation_id, content, user_id, reply_id, now = send
    async with write_transaction():
        # The UPDATE takes the conversation's write lock, so concurrent sends queue here and
        # each gets its own pair of sequence numbers.
        bumped = await fetch(
            "UPDATE conversation SET last_seq = last_seq + 2, updated_at = {} "
            "WHERE id = {} AND owner_key = {} RETURNING last_seq, config_name",
            now,
            conversation_id,
            owner,
        )
        if not bumped:
            raise not_found(conversation_id)
        config = await configs.resolve_config(bumped[0]["config_name"])
        last_seq = bumped[0]["last_seq"]
        history, pending = await _earlier_turns(
            conversation_id, last_seq - 1, config.history_window
        )
        if pending is not None:
            await _retire_or_refuse(conversation_id, pending, now)
        await fetch(
            "INSERT INTO message (id, conversation, seq, role, content, status, llm_config, "
            "model, created_at, completed_at) VALUES "
            "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}), ({}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
            *(user_id, conversation_id, last_seq - 1, "user", content, "complete", None, None),
            *(now, now),
            *(reply_id, conversation_id, last_seq, "assistant", "", "pending", config.id),
            *(config.model, now, None),
        )
    return _Claim(last_seq=last_seq, config=config, history=history)


def _busy(conversation_id: uuid.UUID) -> ConversationBusyError:
    return ConversationBusyError(
        "another reply in this conversation is still being generated; retry when it is done",
        details={"conversation_id": str(conversation_id)},
    )


async def _retire_or_refuse(
    conversation_id: uuid.UUID, pending: dict[str, Any], now: datetime
) -> None:
    """Refuse while the previous reply is being generated; retire it if its process died."""
    if now - pending["created_at"] <= STALE_PENDING_AFTER:
        raise _busy(conversation_id)
    await fetch(
        "UPDATE message SET status = 'failed', error_code = 'interrupted', "
        "error_message = 'the process generating this reply stopped', completed_at = {} "
        "WHERE id = {}",
        now,
        pending["id"],
    )


async def finish_exchange(
    message_id: uuid.UUID, outcome: ReplyOutcome, *, config: ConfigRef | None = None
) -> MessageOut:
    """Write how the model call ended onto the pending assistant message, once.

    ``config`` (the version that produced the reply) saves a lookup when the caller has it.
    """
    if outcome.status == "pending":
        raise ValueError("an outcome must end the message")
    now = datetime.now(UTC)
    # One statement, so atomic without an explicit transaction: one round trip.
    updated = await fetch(
        _FINISH_SQL,
        outcome.status,
        outcome.content,
        outcome.model,
        outcome.prompt_tokens,
        outcome.completion_tokens,
        outcome.latency_ms,
        outcome.ttft_ms,
        outcome.finish_reason,
        outcome.error_code,
        outcome.error_message,
        outcome.upstream_request_id,
        now,
        message_id,
    )
    if not updated:
        raise ConflictError(f"message {message_id} is not pending")
    row = updated[0]
    if config is None:
        return await get_message(message_id)
    return _to_out({**row, "llm_config.name": config.name, "llm_config.version": config.version})


async def iter_messages(
    *, since: datetime | None = None, until: datetime | None = None, batch_size: int = 500
) -> AsyncIterator[list[MessageOut]]:
    """Every message created in [since, until), oldest first, in batches (for exports)."""
    last: tuple[datetime, uuid.UUID] | None = None
    while True:
        query = Message.select(*_COLUMNS)
        if since is not None:
            query = query.where(Message.created_at >= since)
        if until is not None:
            query = query.where(Message.created_at < until)
        if last is not None:
            query = query.where(
                (Message.created_at > last[0])
                | ((Message.created_at == last[0]) & (Message.id > last[1]))
            )
        rows = await query.order_by(Message.created_at, Message.id).limit(batch_size)
        if not rows:
            return
        batch = [_to_out(row) for row in rows]
        yield batch
        last = (batch[-1].created_at, batch[-1].id)
