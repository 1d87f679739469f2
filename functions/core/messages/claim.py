"""The claim: the atomic first half of a send, on PostgreSQL and SQLite alike.

Under the conversation's row lock: take sequence numbers, check (for a threaded send) that
the conversation has not moved on since the caller located it, check the caller's view of
the conversation's configuration, refuse while the previous reply is pending (or retire it
when its own bound, its owner's, has passed or its owner's lease lapsed), read the newest
stored messages, insert the new turns and a pending reply that carries its own bound.
Nothing else: the caller (``functions.core.chat``) has already chosen the configuration
and decides what the history means.

PostgreSQL runs it as one function call (one round trip; see
``functions/core/db/plpgsql/switchboard_claim_v3.sql``), SQLite as the same statements in
one write transaction. Failures are typed errors on both: the function raises its own
SQLSTATE codes, mapped here by code.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.configs import service as configs
from functions.core.conversations.service import not_found
from functions.core.db.engine import atomic, current_engine
from functions.core.db.sql import fetch, json_column
from functions.core.errors import ConflictError, NotFoundError
from functions.core.liveness.service import INTERRUPTED_MESSAGE
from functions.core.messages.schemas import StoredTurn, Turn

# What a refused sender is told to wait: replies take seconds; polling faster only costs.
BUSY_RETRY_AFTER_S = 2.0


class ConversationBusyError(ConflictError):
    code = "conversation_busy"


class IdempotencyRaceError(ConflictError):
    """Another send with the same idempotency key claimed first; look it up and replay."""

    code = "idempotency_race"


class StaleViewError(ConflictError):
    """The caller resolved the configuration from a view that changed meanwhile."""

    code = "stale_configuration_view"


class ThreadMovedError(ConflictError):
    """A threaded send's conversation moved on past the message it was to extend
    (``expect_last_seq``): nothing was stored; the sender branches instead."""

    code = "thread_moved"


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the claim needs; every value is decided before it runs."""

    owner: uuid.UUID
    conversation_id: uuid.UUID
    # The caller's view, checked under the lock: the conversation's config name and the
    # configuration epoch it resolved the reply's configuration under.
    config_name: str | None
    config_epoch: int
    turns: list[Turn]
    turn_ids: list[uuid.UUID]
    reply_id: uuid.UUID
    reply_config_id: uuid.UUID | None
    reply_model: str | None
    # The process generating the reply (its lease says whether it is alive).
    instance_id: uuid.UUID
    now: datetime
    # When this reply, if still pending, is certainly abandoned: ``now`` plus the bound of
    # the process generating it (its own timeouts). The previous reply is judged by its
    # own (or retired if its process's lease lapsed), never by the caller's timeouts.
    stale_after: datetime
    # A previous reply stored without a bound of its own (before there was one) is retired
    # if it was created before this.
    stale_before: datetime
    # How many of the newest stored messages to return (None: all).
    history_limit: int | None
    # An Idempotency-Key stored with the exchange, and the hash of the request it came with.
    idempotency_key: str | None = None
    request_hash: str | None = None
    # Threading (``functions.core.threads``): each new turn's chain hash (one per turn);
    # refuse unless the conversation's last message is still ``expect_last_seq``; a new
    # branch records the message it forked from (set once, by its first claim).
    chain: list[bytes] | None = None
    expect_last_seq: int | None = None
    forked_from_conversation: uuid.UUID | None = None
    forked_from_message: uuid.UUID | None = None


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    last_seq: int
    history: list[StoredTurn]


class _Row(msgspec.Struct, frozen=True):
    seq: int
    role: str
    content: str
    status: str
    content_parts: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _Returned(msgspec.Struct, frozen=True):
    last_seq: int
    history: list[_Row]


_returned = msgspec.json.Decoder(_Returned)
UNIQUE_VIOLATION = "23505"
_SQLSTATES: dict[str, type[Exception]] = {
    "SB404": NotFoundError,
    "SB409": ConversationBusyError,
    "SB410": ThreadMovedError,
    "SB412": StaleViewError,
}


def busy_error(conversation_id: uuid.UUID) -> ConversationBusyError:
    return ConversationBusyError(
        "another reply in this conversation is still being generated; retry when it is done",
        details={"conversation_id": str(conversation_id)},
        retry_after_s=BUSY_RETRY_AFTER_S,
    )


def _error(code: str, conversation_id: uuid.UUID) -> Exception:
    kind = _SQLSTATES[code]
    if kind is NotFoundError:
        return not_found(conversation_id)
    if kind is ConversationBusyError:
        return busy_error(conversation_id)
    if kind is ThreadMovedError:
        return ThreadMovedError(
            "the conversation moved on since the history was located",
            details={"conversation_id": str(conversation_id)},
        )
    return StaleViewError("the configuration changed while the send was prepared")


def _stored(row: _Row) -> StoredTurn:
    turn = Turn(
        role=row.role,  # type: ignore[arg-type]  # stored roles are Roles
        content=row.content,
        parts=row.content_parts,
        tool_calls=row.tool_calls,
        tool_call_id=row.tool_call_id,
        name=row.name,
    )
    return StoredTurn(seq=row.seq, status=row.status, turn=turn)  # type: ignore[arg-type]


def _turn_hashes(request: ClaimRequest) -> list[bytes | None]:
    if request.chain is None:
        return [None] * len(request.turns)
    if len(request.chain) != len(request.turns):
        raise ValueError("a claim's chain has one hash per turn")
    return list(request.chain)


def _turns_json(request: ClaimRequest) -> bytes:
    return msgspec.json.encode(
        [
            {
                "i": index,
                "id": str(turn_id),
                "role": turn.role,
                "content": turn.content,
                "content_parts": turn.parts,
                "tool_calls": turn.tool_calls,
                "tool_call_id": turn.tool_call_id,
                "name": turn.name,
                "chain_hash": None if chain_hash is None else chain_hash.hex(),
            }
            for index, (turn, turn_id, chain_hash) in enumerate(
                zip(request.turns, request.turn_ids, _turn_hashes(request), strict=True), start=1
            )
        ]
    )


async def claim(request: ClaimRequest) -> Claim:
    """Store the new turns and a pending reply; return the sequence and the history.

    Raises :class:`NotFoundError` (no such conversation for this owner),
    :class:`ConversationBusyError` (the previous reply is pending) or
    :class:`StaleViewError` (the caller must resolve the configuration again).
    """
    if not request.turns:
        raise ValueError("a claim stores at least one turn")
    if isinstance(current_engine(), PostgresEngine):
        return await _claim_in_one_call(request)
    return await _claim_stepwise(request)


async def _claim_in_one_call(request: ClaimRequest) -> Claim:
    try:
        rows = await fetch(
            "SELECT switchboard_claim_v3({}, {}, {}, {}, {}::jsonb, {}, {}, {}, {}, {}, {}, {}, "
            "{}, {}, {}, {}, {}, {}, {}) AS claim",
            request.conversation_id,
            request.owner,
            request.config_name,
            request.config_epoch,
            _turns_json(request).decode(),
            request.reply_id,
            request.reply_config_id,
            request.reply_model,
            request.instance_id,
            request.now,
            request.stale_before,
            INTERRUPTED_MESSAGE,
            request.history_limit,
            request.idempotency_key,
            request.request_hash,
            request.stale_after,
            request.expect_last_seq,
            request.forked_from_conversation,
            request.forked_from_message,
            savepoint=True,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == UNIQUE_VIOLATION and request.idempotency_key is not None:
            raise _race() from None
        if exc.sqlstate in _SQLSTATES:
            raise _error(exc.sqlstate, request.conversation_id) from None
        raise
    returned = _returned.decode(rows[0]["claim"])
    return Claim(last_seq=returned.last_seq, history=[_stored(row) for row in returned.history])


async def _claim_stepwise(request: ClaimRequest) -> Claim:
    """The function's steps one statement at a time, in one write transaction (SQLite)."""
    count = len(request.turns)
    conversation_id, now = request.conversation_id, request.now
    async with atomic():
        # The UPDATE takes the write lock, so concurrent sends queue here.
        bumped = await fetch(
            "UPDATE conversation SET last_seq = last_seq + {}, updated_at = {}, "
            "forked_from_conversation_id = COALESCE(forked_from_conversation_id, {}), "
            "forked_from_message_id = COALESCE(forked_from_message_id, {}) "
            "WHERE id = {} AND owner_key = {} RETURNING last_seq, config_name",
            count + 1,
            now,
            request.forked_from_conversation,
            request.forked_from_message,
            conversation_id,
            request.owner,
        )
        if not bumped:
            raise not_found(conversation_id)
        last = bumped[0]["last_seq"] - count - 1
        if request.expect_last_seq is not None and last != request.expect_last_seq:
            raise _error("SB410", conversation_id)
        epoch = await configs.read_epoch()
        if bumped[0]["config_name"] != request.config_name or epoch != request.config_epoch:
            raise _error("SB412", conversation_id)
        previous = await fetch(
            "SELECT id, created_at, stale_after, owner_instance, EXISTS (SELECT 1 FROM "
            "process_lease WHERE id = message.owner_instance AND expires_at > {}) AS owner_alive "
            "FROM message WHERE conversation = {} AND seq = {} AND status = 'pending'",
            now,
            conversation_id,
            last,
        )
        if previous:
            pending = previous[0]
            bound = pending["stale_after"]
            young = pending["created_at"] > request.stale_before if bound is None else bound > now
            if young and (pending["owner_instance"] is None or pending["owner_alive"]):
                raise busy_error(conversation_id)
            await fetch(
                "UPDATE message SET status = 'failed', error_code = 'interrupted', "
                "error_message = {}, completed_at = {} WHERE id = {}",
                INTERRUPTED_MESSAGE,
                now,
                pending["id"],
            )
        rows = await fetch(
            "SELECT seq, role, content, content_parts, tool_calls, tool_call_id, name, status "
            "FROM message WHERE conversation = {} AND seq <= {} ORDER BY seq DESC LIMIT {}",
            conversation_id,
            last,
            -1 if request.history_limit is None else request.history_limit,
        )
        history = [
            _stored(
                _Row(
                    **{
                        **row,
                        "content_parts": json_column(row["content_parts"]),
                        "tool_calls": json_column(row["tool_calls"]),
                    }
                )
            )
            for row in reversed(rows)
        ]
        values: list[Any] = []
        for index, (turn, turn_id, chain_hash) in enumerate(
            zip(request.turns, request.turn_ids, _turn_hashes(request), strict=True), start=1
        ):
            values += [
                turn_id,
                conversation_id,
                last + index,
                turn.role,
                turn.content,
                None if turn.parts is None else msgspec.json.encode(turn.parts).decode(),
                None if turn.tool_calls is None else msgspec.json.encode(turn.tool_calls).decode(),
                turn.tool_call_id,
                turn.name,
                "complete",
                now,
                now,
                None,
                None,
                None,
                None,
                chain_hash,
            ]
        values += [request.reply_id, conversation_id, last + count + 1, "assistant", ""]
        values += [None, None, None, None, "pending", now, None]
        values += [request.reply_config_id, request.reply_model, request.instance_id]
        values += [request.stale_after, None]
        # Only placeholders are joined in; every value goes in as a parameter.
        placeholders = ", ".join(["(" + ", ".join(["{}"] * 17) + ")"] * (count + 1))
        await fetch(
            "INSERT INTO message (id, conversation, seq, role, content, content_parts, "  # noqa: S608
            "tool_calls, tool_call_id, name, status, created_at, completed_at, llm_config, "
            "model, owner_instance, stale_after, chain_hash) VALUES " + placeholders,
            *values,
        )
        if request.idempotency_key is not None:
            try:
                await fetch(
                    "INSERT INTO idempotency_key (id, owner_key, key, request_hash, "
                    "conversation, reply, created_at) VALUES ({}, {}, {}, {}, {}, {}, {})",
                    request.reply_id,
                    request.owner,
                    request.idempotency_key,
                    request.request_hash,
                    conversation_id,
                    request.reply_id,
                    now,
                )
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_CONSTRAINT_UNIQUE:
                    raise
                raise _race() from None
    return Claim(last_seq=last + count + 1, history=history)


def _race() -> IdempotencyRaceError:
    return IdempotencyRaceError("another send with this Idempotency-Key was stored first")
