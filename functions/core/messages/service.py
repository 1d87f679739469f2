"""Messages: reading them, and ending a pending reply.

A send is two short writes around the model call: the claim
(:mod:`functions.core.messages.claim`) stores the new turns and a ``pending`` reply;
:func:`finish_exchange` writes the outcome (``complete``, ``failed`` or ``cancelled``)
onto that reply, and its row in the usage ledger. Nothing is held open while the model
runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.conversations.service import not_found
from functions.core.db.engine import atomic, current_engine
from functions.core.db.sql import fetch, json_column, page_end, size_sql
from functions.core.db.tables import Conversation, Message
from functions.core.errors import ConflictError, NotFoundError
from functions.core.messages.schemas import (
    ConfigRef,
    MessageError,
    MessageOut,
    ReplyOutcome,
    Usage,
)
from functions.core.schemas import (
    DEFAULT_PAGE_BYTES,
    Page,
    bounded_page,
    decode_cursor,
    encode_cursor,
)

if TYPE_CHECKING:
    import uuid

MAX_PAGE_SIZE = 500

_COLUMNS = (
    Message.id,
    Message.conversation,
    Message.seq,
    Message.role,
    Message.content,
    Message.content_parts,
    Message.tool_calls,
    Message.tool_call_id,
    Message.name,
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


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


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
        content_parts=json_column(row["content_parts"]),
        tool_calls=json_column(row["tool_calls"]),
        tool_call_id=row["tool_call_id"],
        name=row["name"],
        status=row["status"],
        config=config,
        model=row["model"],
        usage=usage,
        # Floats on the wire whatever the engine handed back (SQLite may give an int).
        latency_ms=_float(row["latency_ms"]),
        ttft_ms=_float(row["ttft_ms"]),
        finish_reason=row["finish_reason"],
        error=error,
        upstream_request_id=row["upstream_request_id"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
    )


def message_from_row(row: dict[str, Any]) -> MessageOut:
    """A message read by a statement of another service, its columns named as here (the
    configuration's name and version as ``llm_config.name``/``llm_config.version``)."""
    return _to_out(row)


async def get_message(message_id: uuid.UUID) -> MessageOut:
    row = await Message.select(*_COLUMNS).where(Message.id == message_id).first()
    if row is None:
        raise NotFoundError(f"message {message_id} not found")
    return _to_out(row)


async def get_message_at(conversation_id: uuid.UUID, seq: int) -> MessageOut:
    row = (
        await Message.select(*_COLUMNS)
        .where((Message.conversation == conversation_id) & (Message.seq == seq))
        .first()
    )
    if row is None:
        raise NotFoundError(f"no message {seq} in conversation {conversation_id}")
    return _to_out(row)


# A row's size as sent: its text and JSON columns, in bytes on either engine.
_SIZE_COLUMNS = ("content", "content_parts", "tool_calls", "error_message")


async def list_messages(
    owner: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    limit: int = 100,
    cursor: str | None = None,
    max_bytes: int = DEFAULT_PAGE_BYTES,
) -> Page[MessageOut]:
    """A conversation's messages in sequence order, from ``cursor`` on.

    A page holds at most ``limit`` messages and at most ``max_bytes`` of JSON as sent, but
    always at least one message: the sizes are read first, so a page of long messages
    costs what it returns, not ``limit`` times the longest (:func:`bounded_page`).
    """
    owned = await Conversation.exists().where(
        (Conversation.id == conversation_id) & (Conversation.owner_key == owner)
    )
    if not owned:
        raise not_found(conversation_id)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    after = 0 if cursor is None else decode_cursor(cursor, "messages", tuple[int])[0]
    sizes = await fetch(
        "SELECT seq, " + size_sql(_SIZE_COLUMNS) + " AS size FROM message "  # noqa: S608
        "WHERE conversation = {} AND seq > {} ORDER BY seq LIMIT {}",
        conversation_id,
        after,
        limit + 1,
    )
    last_seq, more = page_end(sizes, "seq", limit=limit, max_bytes=max_bytes)
    if last_seq is None:
        return Page(data=[])
    rows = (
        await Message.select(*_COLUMNS)
        .where(
            (Message.conversation == conversation_id)
            & (Message.seq > after)
            & (Message.seq <= last_seq)
        )
        .order_by(Message.seq)
    )
    return bounded_page(
        [_to_out(row) for row in rows],
        more=more,
        max_bytes=max_bytes,
        cursor=lambda last: encode_cursor("messages", last.seq),
    )


_MESSAGE_COLUMNS = (
    "id, conversation, seq, role, content, content_parts, tool_calls, tool_call_id, name, "
    "status, llm_config, model, prompt_tokens, "
    "completion_tokens, latency_ms, ttft_ms, finish_reason, error_code, error_message, "
    "upstream_request_id, created_at, completed_at"
)


# Constant column names; every value goes in as a parameter.
_FINISH_UPDATE = (
    "UPDATE message SET status = {}, content = {}, tool_calls = {}, "  # noqa: S608
    "model = COALESCE({}, model), prompt_tokens = {}, completion_tokens = {}, "
    "latency_ms = {}, ttft_ms = {}, finish_reason = {}, error_code = {}, error_message = {}, "
    "upstream_request_id = {}, completed_at = {}, chain_hash = {} WHERE id = {} AND "
    "(status = 'pending' OR "
    "(status = 'failed' AND error_code = 'interrupted' AND owner_instance = {})) "
    "RETURNING " + _MESSAGE_COLUMNS
)
# The usage ledger's row for the finished reply ``r``, from the reply itself and the
# outcome's owner, configuration and upstream (parameters, in that order). An outcome kept
# by an older process carries no owner: the conversation's is its owner then.
_LEDGER_COLUMNS = (
    "id, owner_key, conversation, llm_config, config_name, config_version, model, upstream, "
    "status, error_code, error_message, prompt_tokens, completion_tokens, ttft_ms, "
    "latency_ms, asked_at, finished_at"
)


def _ledger_values(*, postgres: bool) -> str:
    # PostgreSQL cannot infer a parameter's type inside COALESCE with a subquery: cast it.
    uuid_, text, integer = ("::uuid", "::text", "::integer") if postgres else ("", "", "")
    # Constant SQL: every value is a parameter.
    return (
        f"r.id, COALESCE({{}}{uuid_}, "  # noqa: S608
        "(SELECT c.owner_key FROM conversation c WHERE c.id = r.conversation)), "
        "r.conversation, r.llm_config, "
        f"COALESCE({{}}{text}, (SELECT l.name FROM llm_config l WHERE l.id = r.llm_config)), "
        f"COALESCE({{}}{integer}, "
        "(SELECT l.version FROM llm_config l WHERE l.id = r.llm_config)), "
        "r.model, {}, r.status, r.error_code, r.error_message, r.prompt_tokens, "
        "r.completion_tokens, r.ttft_ms, r.latency_ms, r.created_at, r.completed_at"
    )


# A reply finished after a sweep retired it replaces what the ledger held for it: one row
# per exchange, its last outcome.
_LEDGER_UPSERT = " ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{column} = excluded.{column}" for column in _LEDGER_COLUMNS.split(", ")[1:]
)
# PostgreSQL: the outcome and its ledger row in one statement (a data-modifying CTE), so
# one round trip and atomic without a transaction. SQLite has no DML in a CTE: there the
# ledger row is a second statement in the same transaction, reading the updated reply.
_PG_FINISH_SQL = (
    f"WITH r AS ({_FINISH_UPDATE}), ledger AS ("  # noqa: S608
    f"INSERT INTO usage_ledger ({_LEDGER_COLUMNS}) "
    f"SELECT {_ledger_values(postgres=True)} FROM r{_LEDGER_UPSERT}) SELECT * FROM r"
)
_SQLITE_LEDGER_SQL = (
    f"INSERT INTO usage_ledger ({_LEDGER_COLUMNS}) "  # noqa: S608
    f"SELECT {_ledger_values(postgres=False)} FROM message r WHERE r.id = {{}}{_LEDGER_UPSERT}"
)


async def finish_exchange(
    message_id: uuid.UUID,
    outcome: ReplyOutcome,
    *,
    config: ConfigRef | None = None,
    owner_instance: uuid.UUID | None = None,
    owner: uuid.UUID | None = None,
) -> MessageOut:
    """Write how the model call ended onto the pending assistant message, once, and its
    row in the usage ledger (which deleting the conversation leaves in place) with it.

    ``config`` (the version that produced the reply) saves a lookup when the caller has it.
    ``owner_instance``, the process generating the reply, may also finish it after a sweep
    retired it as interrupted (its lease lapsed while the database was out of reach, but
    the process lived and has the answer): the answer is kept, not thrown away.
    ``owner``: the key charged (None: the conversation's owner).
    """
    if outcome.status == "pending":
        raise ValueError("an outcome must end the message")
    now = datetime.now(UTC)
    tool_calls = (
        None if outcome.tool_calls is None else msgspec.json.encode(outcome.tool_calls).decode()
    )
    finish = (
        outcome.status,
        outcome.content,
        tool_calls,
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
        outcome.chain_hash,
        message_id,
        owner_instance,
    )
    ledger = (
        owner,
        config.name if config is not None else None,
        config.version if config is not None else None,
        outcome.upstream,
    )
    if isinstance(current_engine(), PostgresEngine):
        updated = await fetch(_PG_FINISH_SQL, *finish, *ledger)
    else:
        async with atomic():
            updated = await fetch(_FINISH_UPDATE, *finish)
            if updated:
                await fetch(_SQLITE_LEDGER_SQL, *ledger, message_id)
    if not updated:
        raise ConflictError(f"message {message_id} is not pending")
    row = updated[0]
    if config is None:
        return await get_message(message_id)
    return _to_out({**row, "llm_config.name": config.name, "llm_config.version": config.version})
