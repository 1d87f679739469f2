"""Ledger rows for calls that store no conversation (embeddings).

A reply's row is written with its outcome (``messages.finish_exchange``); a call with no
conversation has no outcome to ride on, so its row is written here, once, when it ends.
The ledger's ``conversation`` column is required: such a row holds :data:`NO_CONVERSATION`
(the nil UUID), which no conversation ever has and the usage report does not count as one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from functions.core.db.sql import fetch

NO_CONVERSATION = uuid.UUID(int=0)
_INSERT = (
    "INSERT INTO usage_ledger (id, owner_key, conversation, model, upstream, status, "
    "error_code, error_message, prompt_tokens, completion_tokens, latency_ms, asked_at, "
    "finished_at) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})"
)


class UnstoredCall(msgspec.Struct, frozen=True, kw_only=True):
    """One finished call with no conversation: who is charged, for what, how it went."""

    owner: uuid.UUID
    model: str
    status: str
    asked_at: datetime
    finished_at: datetime
    upstream: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    error_code: str | None = None
    error_message: str | None = None


async def record_unstored(call: UnstoredCall) -> uuid.UUID:
    """Write ``call``'s ledger row; returns its id."""
    row_id = uuid.uuid4()
    await fetch(
        _INSERT,
        row_id,
        call.owner,
        NO_CONVERSATION,
        call.model,
        call.upstream,
        call.status,
        call.error_code,
        call.error_message,
        call.prompt_tokens,
        call.completion_tokens,
        call.latency_ms,
        call.asked_at,
        call.finished_at,
    )
    return row_id
