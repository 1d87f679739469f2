"""Claim rules that the parity test cannot see: it compares the engines with each other and
reads only conversations and messages, so a rule both engines lose, or one that writes
elsewhere (the idempotency key), passes it. Each test here fails when its rule is taken out.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.configs import service as configs
from functions.core.db.sql import fetch
from functions.core.messages.claim import (
    ClaimRequest,
    ConversationBusyError,
    IdempotencyRaceError,
    claim,
)
from functions.core.messages.schemas import Turn
from tests.core.messages.test_claim_parity import T0, World, complete_last, user, world

BOUND = timedelta(minutes=15)


async def request(
    w: World,
    turns: list[Turn],
    *,
    key: str | None = None,
    request_hash: str | None = None,
    instance: uuid.UUID | None = None,
    at: datetime = T0,
) -> ClaimRequest:
    return ClaimRequest(
        owner=w.owner,
        conversation_id=w.conversation,
        config_name=w.config_name,
        config_epoch=await configs.read_epoch(),
        turns=turns,
        turn_ids=[uuid.uuid4() for _ in turns],
        reply_id=uuid.uuid4(),
        reply_config_id=w.config_id,
        reply_model="m",
        instance_id=instance or w.lease.instance_id,
        now=at,
        stale_after=at + BOUND,
        stale_before=at - BOUND,
        history_limit=None,
        idempotency_key=key,
        request_hash=request_hash,
    )


async def counts(w: World) -> tuple[int, int]:
    rows = await fetch(
        "SELECT (SELECT count(*) FROM message WHERE conversation = {}) AS messages, "
        "(SELECT last_seq FROM conversation WHERE id = {}) AS last_seq",
        w.conversation,
        w.conversation,
    )
    return rows[0]["messages"], rows[0]["last_seq"]


async def test_the_idempotency_key_is_stored_with_its_exchange(db: Engine[Any]) -> None:
    w = await world()
    first = await request(w, [user("once")], key="key-1", request_hash="hash-1")
    await claim(first)
    rows = await fetch(
        "SELECT owner_key, key, request_hash, conversation, reply FROM idempotency_key"
    )
    assert [
        (
            str(row["owner_key"]),
            row["key"],
            row["request_hash"],
            str(row["conversation"]),
            str(row["reply"]),
        )
        for row in rows
    ] == [(str(w.owner), "key-1", "hash-1", str(w.conversation), str(first.reply_id))]


async def test_a_second_claim_with_the_same_key_loses_the_race_and_stores_nothing(
    db: Engine[Any],
) -> None:
    w = await world()
    await claim(await request(w, [user("once")], key="key-1", request_hash="hash-1"))
    await complete_last(w, "done")  # the conversation is free again: only the key can refuse
    before = await counts(w)
    with pytest.raises(IdempotencyRaceError):
        await claim(await request(w, [user("again")], key="key-1", request_hash="hash-1"))
    assert await counts(w) == before
    # A claim without a key, or with another, goes through after the refused one.
    await claim(await request(w, [user("other")], key="key-2", request_hash="hash-2"))
    await complete_last(w, "done")
    claimed = await claim(await request(w, [user("no key")]))
    assert claimed.last_seq == before[1] + 4
    keys = await fetch("SELECT key FROM idempotency_key ORDER BY key")
    assert [row["key"] for row in keys] == ["key-1", "key-2"]


async def test_a_claim_without_turns_is_refused_before_it_stores_anything(
    db: Engine[Any],
) -> None:
    w = await world()
    before = await counts(w)
    with pytest.raises(ValueError, match="at least one turn"):
        await claim(await request(w, []))
    assert await counts(w) == before


async def test_the_claim_returns_the_replys_seq_after_several_turns(db: Engine[Any]) -> None:
    w = await world()
    turns = [user("one"), Turn(role="assistant", content="two"), user("three")]
    claimed = await claim(await request(w, turns))
    assert claimed.last_seq == 4
    rows = await fetch(
        "SELECT seq, role, status FROM message WHERE conversation = {} ORDER BY seq",
        w.conversation,
    )
    assert [(r["seq"], r["role"], r["status"]) for r in rows] == [
        (1, "user", "complete"),
        (2, "assistant", "complete"),
        (3, "user", "complete"),
        (4, "assistant", "pending"),
    ]


async def test_a_young_reply_whose_owner_is_gone_is_retired_not_waited_for(
    db: Engine[Any],
) -> None:
    """Within its bound, a pending reply makes the next send busy only while its process
    lives (its lease): a process that died leaves nobody to finish it."""
    w = await world()
    dead = uuid.uuid4()  # a process without a lease
    orphaned = await request(w, [user("one")], instance=dead)
    await claim(orphaned)
    claimed = await claim(await request(w, [user("two")], at=T0 + timedelta(seconds=1)))
    assert claimed.last_seq == 4
    rows = await fetch("SELECT status, error_code FROM message WHERE id = {}", orphaned.reply_id)
    assert [(r["status"], r["error_code"]) for r in rows] == [("failed", "interrupted")]
    # The same young reply of a live process (this test's lease) keeps the next one out.
    with pytest.raises(ConversationBusyError):
        await claim(await request(w, [user("three")], at=T0 + timedelta(seconds=2)))
