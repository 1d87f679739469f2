"""A live process retires its own pending replies that it is not answering.

Every other sweep spares a live process's replies, so the process itself must know which
of its pending rows it will still answer (``Lease.replies``): a claim that committed while
its answer was lost left a row naming it that it will never generate. These tests make
that row the honest way, with a claim whose result the process never hears of, and check
that the process retires it, and only it, within a beat of its lease.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.exchanges import Exchanges, unconfirmed_send
from functions.core.chat.idempotency import Idempotency
from functions.core.chat.schemas import SendRequest
from functions.core.configs import service as configs
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.liveness.replies import OwnReplies
from functions.core.liveness.service import (
    ABANDONED_MESSAGE,
    Lease,
    retire_abandoned,
    sweep_interrupted,
)
from functions.core.messages import service as messages
from functions.core.messages.claim import ClaimRequest, ConversationBusyError, claim
from functions.core.messages.schemas import ReplyOutcome, Turn
from tests.core.chat.conftest import Party, new_party, stored_of

BOUND = timedelta(minutes=15)


async def claim_unheard(party: Party, lease: Lease, text: str) -> ClaimRequest:
    """A claim by ``lease``'s process that committed but whose answer the process never
    heard: its books (``lease.replies``) know nothing of it."""
    now = datetime.now(UTC)
    request = ClaimRequest(
        owner=party.owner,
        conversation_id=party.conversation_id,
        config_name=party.config.name,
        config_epoch=await configs.read_epoch(),
        turns=[Turn(role="user", content=text)],
        turn_ids=[uuid.uuid4()],
        reply_id=uuid.uuid4(),
        reply_config_id=party.config.id,
        reply_model=party.config.model,
        instance_id=lease.instance_id,
        now=now,
        stale_after=now + BOUND,
        stale_before=now - BOUND,
        history_limit=None,
    )
    await claim(request)
    return request


async def statuses(party: Party) -> list[tuple[str, str, str | None]]:
    return [
        (m.role, m.status, m.error.message if m.error else None) for m in await stored_of(party)
    ]


async def test_the_sweep_retires_only_the_replies_nobody_here_answers(db: Engine[Any]) -> None:
    lease = Lease(ttl_s=60)
    await lease.renew()
    exchanges = Exchanges(busy_timeout_s=0, lease=lease)
    lost, answered, claiming = await new_party(), await new_party(), await new_party()

    await claim_unheard(lost, lease, "lost")
    exchange = await exchanges.begin(answered.says("answered"))
    # A claim under way: entered before it runs, so a sweep between its commit and its
    # return must not take it for lost.
    in_progress = await claim_unheard(claiming, lease, "claiming")
    lease.replies.proposed(in_progress.reply_id)

    # Any other sweep spares a live process's replies, lost or not.
    assert await sweep_interrupted(bound=BOUND, spare=lease.instance_id) == []
    assert await sweep_interrupted(bound=BOUND) == []

    retired = await retire_abandoned(lease)
    assert [r.conversation_id for r in retired] == [lost.conversation_id]
    assert await statuses(lost) == [
        ("user", "complete", None),
        ("assistant", "failed", ABANDONED_MESSAGE),
    ]
    assert (await statuses(answered))[1][1] == "pending"
    assert (await statuses(claiming))[1][1] == "pending"

    # The conversation takes its next send at once; the lost exchange stays out of its
    # history (its reply failed).
    again = await exchanges.begin(lost.says("again"))
    assert [turn.content for turn in again.prompt][-1:] == ["again"]
    assert "lost" not in [turn.content for turn in again.prompt]

    # An entry whose reply ended is forgotten by the next sweep; one still claiming is kept.
    await messages.finish_exchange(
        exchange.assistant_message.id,
        ReplyOutcome(status="complete", content="done"),
        owner_instance=lease.instance_id,
    )
    assert exchange.assistant_message.id in lease.replies
    assert await retire_abandoned(lease) == []
    assert exchange.assistant_message.id not in lease.replies
    assert in_progress.reply_id in lease.replies
    assert again.assistant_message.id in lease.replies


async def test_a_refused_claim_leaves_nothing_in_the_books(db: Engine[Any]) -> None:
    lease = Lease(ttl_s=60)
    party = await new_party()
    exchanges = Exchanges(busy_timeout_s=0, lease=lease)
    first = await exchanges.begin(party.says("first"))
    with pytest.raises(ConversationBusyError):
        await exchanges.begin(party.says("second"))
    assert len(lease.replies) == 1
    assert first.assistant_message.id in lease.replies


async def test_the_lease_frees_a_conversation_within_a_beat(
    shared_db: Engine[Any],
) -> None:
    """Every process that sends has a lease (a flow as well as a gateway): every third of
    the lease's TTL, it retires what the process lost track of."""
    lease = Lease(ttl_s=1.5)
    await lease.renew()
    party = await new_party()
    lease.start()
    try:
        await asyncio.sleep(0.1)  # the first beat has been: this one waits for the next
        await claim_unheard(party, lease, "lost")
        started = time.monotonic()
        while (await statuses(party))[1][1] == "pending":
            assert time.monotonic() - started < 10, "not retired within 10 s"
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
    finally:
        await lease.stop(release=True)
    print(f"\nretired by the lease's bookkeeping {took:.2f} s after the claim (a beat: 0.5 s)")
    assert await statuses(party) == [
        ("user", "complete", None),
        ("assistant", "failed", ABANDONED_MESSAGE),
    ]


def test_the_503_of_an_unknown_claim_names_the_ids_and_how_to_retry() -> None:
    now = datetime.now(UTC)
    turns = [Turn(role="system", content="s"), Turn(role="user", content="u")]
    request = ClaimRequest(
        owner=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        config_name=None,
        config_epoch=1,
        turns=turns,
        turn_ids=[uuid.uuid4(), uuid.uuid4()],
        reply_id=uuid.uuid4(),
        reply_config_id=None,
        reply_model=None,
        instance_id=uuid.uuid4(),
        now=now,
        stale_after=now + BOUND,
        stale_before=now - BOUND,
        history_limit=None,
    )
    send = SendRequest(
        access=UNRESTRICTED,
        owner=request.owner,
        conversation_id=request.conversation_id,
        turns=turns,
    )
    keyed = unconfirmed_send(
        request,
        msgspec.structs.replace(send, idempotency=Idempotency(key="k-1", request_hash="h")),
    )
    assert (keyed.status_code, keyed.code) == (503, "database_unavailable")
    assert keyed.details == {
        "conversation_id": str(request.conversation_id),
        "user_message_id": str(request.turn_ids[-1]),
        "assistant_message_id": str(request.reply_id),
        "message_ids": [str(turn_id) for turn_id in request.turn_ids],
        "stored": "unknown",
        "idempotency_key": "k-1",
    }
    assert "same Idempotency-Key is safe" in keyed.message
    bare = unconfirmed_send(request, send)
    assert "idempotency_key" not in bare.details
    assert "would store it again" in bare.message


def test_the_books_forget_only_what_ended_before_the_read() -> None:
    replies = OwnReplies()
    ended, recorded_late, claiming, lost = (uuid.uuid4() for _ in range(4))
    replies.proposed(ended)
    replies.claimed(ended)
    read_at = time.monotonic()
    # Claimed after the read: the read could not have seen it pending, it is not over.
    replies.proposed(recorded_late)
    replies.claimed(recorded_late)
    replies.proposed(claiming)  # its claim still running
    assert replies.settle({lost}, read_at) == [lost]
    assert (ended in replies, recorded_late in replies, claiming in replies) == (
        False,
        True,
        True,
    )
    replies.abandoned(claiming)
    assert len(replies) == 1
