"""Idempotent sends: the same ``Idempotency-Key`` and body return the first exchange.

A client facing an unclear outcome (a timeout, a cut connection, a 503 while its message
may already be stored) retries with the same key. The key is stored with the exchange in
the claim, unique per owner, so it holds across workers and replicas: a retry, even one
racing the original, finds the first exchange and gets its result, or its current state
while it is still generating. The same key with another body is a client bug (409).
Keys are remembered for ``idempotency_window_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.db.sql import fetch
from functions.core.errors import ConflictError, SwitchboardError
from functions.core.messages import service as messages

if TYPE_CHECKING:
    import uuid

    from functions.core.messages.schemas import MessageOut

POLL_S = 0.1


class Idempotency(msgspec.Struct, frozen=True, kw_only=True):
    """A send's key and the hash of what was sent with it."""

    key: str
    request_hash: str


class KeyReusedError(ConflictError):
    code = "idempotency_key_reused"


class InProgressError(ConflictError):
    code = "idempotent_request_in_progress"


class Replay(Exception):  # noqa: N818 - control flow, not an error
    """The send was made before with this key: answer with that exchange."""

    def __init__(self, reply_id: uuid.UUID) -> None:
        super().__init__(str(reply_id))
        self.reply_id = reply_id


def request_hash(*parts: Any) -> str:
    """A stable hash of what a door received (its parsed body and path, say)."""
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()


async def find_previous(
    owner: uuid.UUID, idempotency: Idempotency, window: timedelta
) -> uuid.UUID | None:
    """The reply of the send first made with this key, if it is within the window.

    Raises :class:`KeyReusedError` when that send had another body.
    """
    rows = await fetch(
        "SELECT reply, request_hash, created_at FROM idempotency_key "
        "WHERE owner_key = {} AND key = {}",
        owner,
        idempotency.key,
    )
    if not rows:
        return None
    row = rows[0]
    if row["created_at"] < datetime.now(UTC) - window:
        # Expired but not yet pruned: the key is free again.
        await fetch(
            "DELETE FROM idempotency_key WHERE owner_key = {} AND key = {} AND created_at = {}",
            owner,
            idempotency.key,
            row["created_at"],
        )
        return None
    if row["request_hash"] != idempotency.request_hash:
        raise KeyReusedError(
            "this Idempotency-Key was used with a different request; use a new key for a "
            "new request",
            details={"idempotency_key": idempotency.key},
        )
    reply: uuid.UUID = row["reply"]
    return reply


async def wait_for_outcome(reply_id: uuid.UUID, timeout_s: float) -> MessageOut:
    """The reply once it is no longer pending, or as it is when ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await messages.get_message(reply_id)
        if reply.status != "pending" or time.monotonic() >= deadline:
            return reply
        await asyncio.sleep(POLL_S)


class ReplayedFailureError(ConflictError):
    """The first send with this key ended in an error: the key is used up."""

    code = "idempotent_request_failed"


def outcome_error(reply: MessageOut) -> SwitchboardError | None:
    """What to raise for a replayed reply that did not complete (None if it did).

    A failure is final for its key: retrying with the same key would only replay it, so
    the answer is a 409 that says to send again with a new key, with the first failure's
    code and message in ``details``.
    """
    ids: dict[str, Any] = {
        "conversation_id": str(reply.conversation_id),
        "assistant_message_id": str(reply.id),
        "replayed": True,
    }
    if reply.status == "complete":
        return None
    if reply.status == "pending":
        return InProgressError(
            "the first request with this Idempotency-Key is still being answered; retry "
            "with the same key to get its result",
            details=ids,
            retry_after_s=2,
        )
    code = reply.error.code if reply.error else "cancelled"
    message = reply.error.message if reply.error else "the reply did not complete"
    return ReplayedFailureError(
        f"the first request with this Idempotency-Key ended without a reply ({code}: "
        f"{message}); send it again with a new key",
        details={**ids, "first_error": {"code": code, "message": message}},
    )
