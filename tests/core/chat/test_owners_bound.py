"""A pending reply is judged by its owner's bound, never by the sweeper's or the sender's.

Two runtimes with different timeouts share one database, as two gateway deployments (or a
gateway and the maintenance flow) may: the one with the longer timeouts is generating a
reply that has run for a while. The one with the shorter timeouts must neither retire it
in its sweep nor retire it to send into the conversation; only once the owner's own bound
has passed is the reply retired, by anyone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.engine import current_engine
from functions.core.db.sql import fetch
from functions.core.liveness.service import (
    Lease,
    pending_bound,
    retire_abandoned,
    sweep_interrupted,
)
from functions.core.messages.claim import ConversationBusyError
from functions.core.runtime import Runtime
from functions.core.settings import Settings, load_settings
from tests.core.chat.conftest import new_party, stored_of

PATIENT = load_settings({}, dotenv=None)
HASTY = load_settings(
    {
        "SWITCHBOARD_LLM_TOTAL_TIMEOUT_S": "5",
        "SWITCHBOARD_OUTCOME_RETRY_S": "1",
        "SWITCHBOARD_SHUTDOWN_GRACE_S": "0",
        "SWITCHBOARD_SEND_LOCK_TIMEOUT_S": "0.1",
    },
    dotenv=None,
)


async def runtime(settings: Settings) -> Runtime:
    """A runtime as a gateway process opens it (its services built from its settings)."""
    lease = Lease(ttl_s=settings.lease_ttl_s)
    await lease.renew()
    return Runtime(settings, current_engine(), None, None, lease=lease)


async def age(reply_id: Any, by: timedelta) -> None:
    """Move a reply back in time, as if it had been generating for ``by`` longer."""
    row = (await fetch("SELECT created_at, stale_after FROM message WHERE id = {}", reply_id))[0]
    await fetch(
        "UPDATE message SET created_at = {}, stale_after = {} WHERE id = {}",
        row["created_at"] - by,
        row["stale_after"] - by,
        reply_id,
    )


async def test_a_hasty_process_never_judges_a_patient_ones_reply_by_its_own_bound(
    db: Engine[Any],
) -> None:
    patient, hasty = await runtime(PATIENT), await runtime(HASTY)
    assert (
        pending_bound(HASTY)
        < timedelta(minutes=2)
        < timedelta(minutes=13)
        < (pending_bound(PATIENT))
    )
    party = await new_party()
    started = datetime.now(UTC)
    exchange = await patient.exchanges.begin(party.says("a long question"))
    reply_id = exchange.assistant_message.id
    [row] = await fetch("SELECT created_at, stale_after FROM message WHERE id = {}", reply_id)
    assert row["stale_after"] - row["created_at"] == pending_bound(PATIENT)
    assert row["created_at"] >= started - timedelta(seconds=1)

    # Five minutes in: past the hasty process's bound, well within the patient one's.
    await age(reply_id, timedelta(minutes=5))
    hasty_lease = hasty.exchanges.lease
    assert await sweep_interrupted(bound=pending_bound(HASTY), spare=hasty_lease.instance_id) == []
    assert await retire_abandoned(hasty_lease) == []
    # The maintenance flow sweeps with its own settings too, and no lease of its own.
    assert await sweep_interrupted(bound=pending_bound(HASTY)) == []
    with pytest.raises(ConversationBusyError):
        await hasty.exchanges.begin(party.says("may I?"))
    assert [(m.role, m.status) for m in await stored_of(party)] == [
        ("user", "complete"),
        ("assistant", "pending"),
    ]

    # Past the owner's own bound the reply is abandoned, whoever looks.
    await age(reply_id, pending_bound(PATIENT))
    retired = await sweep_interrupted(bound=pending_bound(HASTY), spare=hasty_lease.instance_id)
    assert [r.message_id for r in retired] == [reply_id]
    second = await hasty.exchanges.begin(party.says("may I?"))
    assert [(m.role, m.status) for m in await stored_of(party)] == [
        ("user", "complete"),
        ("assistant", "failed"),
        ("user", "complete"),
        ("assistant", "pending"),
    ]
    assert second.assistant_message.seq == 4


async def test_the_claim_retires_an_owners_reply_past_its_bound_without_a_sweep(
    db: Engine[Any],
) -> None:
    patient, hasty = await runtime(PATIENT), await runtime(HASTY)
    party = await new_party()
    first = await hasty.exchanges.begin(party.says("quick?"))
    # Two minutes in: past the hasty owner's bound, within the patient sender's.
    await age(first.assistant_message.id, timedelta(minutes=2))
    second = await patient.exchanges.begin(party.says("next"))
    rows = await stored_of(party)
    assert [(m.role, m.status) for m in rows] == [
        ("user", "complete"),
        ("assistant", "failed"),
        ("user", "complete"),
        ("assistant", "pending"),
    ]
    assert rows[1].error is not None
    assert rows[1].error.code == "interrupted"
    assert rows[3].id == second.assistant_message.id
