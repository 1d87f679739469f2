"""A send waits for a busy conversation once: one ``SWITCHBOARD_SEND_LOCK_TIMEOUT_S``.

Another process's reply is pending in the conversation. In this process a first send holds
the conversation's lock while its claim is refused and retried; a second send queues on
that lock. Both waits, the lock's and the claim's, come out of one budget: the second send
gets its ``409 conversation_busy`` about one timeout after it started, never two.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.service import ChatService
from functions.core.messages.claim import ConversationBusyError
from tests.core.chat.conftest import MakeClient, new_party, stored_of
from tests.support.simulator import SimulatorProcess

BUDGET_S = 3.0
QUEUED_AFTER_S = 0.2
# What a loaded machine may add to the budget (one claim attempt and the scheduling);
# two budgets one after the other would take BUDGET_S more.
MARGIN_S = 1.0


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "streamed"])
async def test_a_queued_send_is_busy_after_one_budget_not_two(
    shared_db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient, streamed: bool
) -> None:
    party = await new_party()
    # Another process's reply, pending (its lease is alive).
    await Exchanges(busy_timeout_s=0).begin(party.says("theirs"))
    chat = ChatService(make_client(sim.base_url), Exchanges(busy_timeout_s=BUDGET_S))

    async def attempt(text: str) -> object:
        if streamed:
            return await anext(chat.stream(party.says(text)))
        return await chat.send(party.says(text))

    async def send(text: str) -> float:
        started = time.monotonic()
        with pytest.raises(ConversationBusyError):
            await attempt(text)
        return time.monotonic() - started

    holding = asyncio.create_task(send("first"))  # holds the lock, retrying the claim
    await asyncio.sleep(QUEUED_AFTER_S)
    queued_s = await send("second")
    holding_s = await holding
    print(f"\nbusy after {holding_s:.2f} s (lock holder) and {queued_s:.2f} s (queued)")

    assert BUDGET_S - 0.1 <= holding_s < BUDGET_S + MARGIN_S
    assert BUDGET_S - QUEUED_AFTER_S - 0.1 <= queued_s < BUDGET_S + MARGIN_S
    assert [m.content for m in await stored_of(party)] == ["theirs", ""]
    assert (await sim.stats_async())["total_requests"] == 0
