"""Threading: a resent history lands in the conversation that holds it.

Chat applications send the whole history every turn. :func:`locate` finds, in one indexed
query on ``message.chain_hash`` (``chain``), the longest prefix of a request's history
that ends on a stored assistant message of the same key, and answers:

- **append** when that message is still its conversation's last: the rest of the history
  is new turns, and the claim checks the conversation has not moved meanwhile
  (``expect_last_seq``);
- **append** too when only failed or cancelled exchanges came after it: a client
  retrying (the SDKs retry a 5xx) continues the same conversation, after the failures;
- **branch** when the conversation moved on past it (a regenerated turn, an edited one,
  another resend that got there first or is being answered): a new conversation holds the
  whole history and records the message it forked from;
- **new** otherwise.

Only prefixes ending on an assistant message are looked up, and at most the whole history
but its last message (a send always has a new turn to answer): a user or system turn
shared by many conversations (every chat of an application starts with its system prompt)
is no fork point. A reply gets its hash when it completes, so a failed or cancelled reply
(whose text differs from what the client would resend) never matches. Whatever the
lookup said, the claim decides under the conversation's lock; a send it refuses
(``ThreadMovedError``) branches (``Exchanges.begin``), never an error.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import current_engine
from functions.core.db.sql import fetch
from functions.core.threads.chain import DIGEST_SIZE, chain
from functions.core.threads.schemas import ForkPoint, Located

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.chat.schemas import SendRequest
    from functions.core.messages.schemas import Turn

# The longest prefix found first (candidates come longest first); among the messages
# holding it, one that is still its conversation's last (append), else the newest (the
# branch's fork point). Owner-checked though the hash is salted with the owner.
_CANDIDATES = (
    "SELECT hit.k, m.id, m.conversation, m.seq, c.last_seq FROM hit "
    "JOIN message m ON m.chain_hash = hit.h JOIN conversation c ON c.id = m.conversation "
    "WHERE c.owner_key = {} ORDER BY m.seq = c.last_seq DESC, m.created_at DESC LIMIT 1"
)
_HIT = "WHERE EXISTS (SELECT 1 FROM message m WHERE m.chain_hash = p.h) ORDER BY p.k DESC LIMIT 1"
# PostgreSQL: the prefixes' hashes as one bytea (DIGEST_SIZE bytes each) and their lengths
# as one comma-separated text, so the statement is the same for any length (prepared once
# per connection) and its parameters are two scalars: asyncpg encodes an array element by
# element, which cost more than the rest of the lookup's encoding.
_PG_LOCATE = (
    "WITH p AS (SELECT u.k::integer AS k, "  # noqa: S608
    f"substring({{}}::bytea FROM (u.n::integer - 1) * {DIGEST_SIZE} + 1 FOR {DIGEST_SIZE}) AS h "
    "FROM unnest(string_to_array({}::text, ',')) WITH ORDINALITY AS u(k, n)), "
    f"hit AS (SELECT p.k, p.h FROM p {_HIT}) {_CANDIDATES}"
)


def _sqlite_locate(count: int) -> str:
    # Only placeholders are joined in; every value is a parameter.
    values = ", ".join(["({}, {})"] * count)
    return (
        f"WITH p(k, h) AS (VALUES {values}), hit AS (SELECT p.k, p.h FROM p {_HIT}) {_CANDIDATES}"  # noqa: S608
    )


async def locate(owner: uuid.UUID, history: Sequence[Turn]) -> Located:
    """Where ``history`` (a request's whole list of messages) belongs for ``owner``."""
    hashes = chain(owner, history)
    # Prefixes ending on an assistant message, never the whole history.
    prefixes = [k for k in range(len(history) - 1, 0, -1) if history[k - 1].role == "assistant"]
    if not prefixes:
        return Located(chain=hashes)
    found = await _lookup(owner, [(k, hashes[k - 1]) for k in prefixes])
    if found is None:
        return Located(chain=hashes)
    matched, message_id, conversation_id, seq, last_seq = found
    if seq != last_seq and not await _answered_after(conversation_id, seq):
        # Only exchanges that failed or were cancelled came after the matched reply: the
        # client is retrying (the SDKs retry a 5xx twice). Its turns go after them, in the
        # same conversation, rather than each retry leaving a branch behind.
        seq = last_seq
    if seq == last_seq:
        return Located(
            chain=hashes,
            conversation_id=conversation_id,
            matched=matched,
            expect_last_seq=seq,
            tail_message_id=message_id,
        )
    return Located(
        chain=hashes,
        forked_from=ForkPoint(conversation_id=conversation_id, message_id=message_id),
    )


# Whether a reply after the matched message was answered, or is being: anything but a
# failed or cancelled one means the conversation really moved on.
_ANSWERED_AFTER = (
    "SELECT 1 AS answered FROM message WHERE conversation = {} AND seq > {} "
    "AND role = 'assistant' AND status NOT IN ('failed', 'cancelled') LIMIT 1"
)


async def _answered_after(conversation_id: uuid.UUID, seq: int) -> bool:
    return bool(await fetch(_ANSWERED_AFTER, conversation_id, seq))


async def _lookup(
    owner: uuid.UUID, prefixes: list[tuple[int, bytes]]
) -> tuple[int, uuid.UUID, uuid.UUID, int, int] | None:
    rows: list[dict[str, Any]]
    if isinstance(current_engine(), PostgresEngine):
        hashes = b"".join(h for _, h in prefixes)
        lengths = ",".join(str(k) for k, _ in prefixes)
        rows = await fetch(_PG_LOCATE, hashes, lengths, owner)
    else:
        flat: list[Any] = [value for pair in prefixes for value in pair]
        rows = await fetch(_sqlite_locate(len(prefixes)), *flat, owner)
    if not rows:
        return None
    row = rows[0]
    return (
        int(row["k"]),
        uuid.UUID(str(row["id"])),
        uuid.UUID(str(row["conversation"])),
        int(row["seq"]),
        int(row["last_seq"]),
    )


def place(request: SendRequest, located: Located) -> SendRequest:
    """``request`` (its ``turns`` the whole history) sent where ``located`` says: its new
    turns only, into the conversation it extends, or into a new one (a branch or not)."""
    history = request.turns
    return msgspec.structs.replace(
        request,
        conversation_id=located.conversation_id,
        turns=history[located.matched :],
        thread=located.thread(history),
    )


async def threaded(request: SendRequest) -> SendRequest:
    """A door's send whose ``turns`` are the request's whole history, placed in its
    thread (:func:`locate`, then :func:`place`)."""
    return place(request, await locate(request.owner, request.turns))


def new_thread(request: SendRequest) -> SendRequest:
    """A door's send (``turns``: the whole history) into a new conversation whatever is
    stored (the client asked for one), hashed so that its later resends thread into it."""
    return place(request, Located(chain=chain(request.owner, request.turns)))
