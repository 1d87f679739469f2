"""One reply at a time per conversation, across processes; ownership before any wait.

Two ``ChatService`` instances, each with its own ``Exchanges``, stand in for two gateway
processes: separate in-process locks and caches, separate database connections (the
PostgreSQL pool; on SQLite every query opens its own connection). Their only meeting
point is the claim, which refuses while the other's reply is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.service import ChatService
from functions.core.errors import NotFoundError
from functions.core.messages.claim import ConversationBusyError
from functions.core.messages.schemas import MessageOut
from tests.core.chat.conftest import MakeClient, new_key, new_party, stored_of
from tests.core.llm.conftest import Faults
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled


def summary(rows: list[MessageOut]) -> list[tuple[int, str, str, str]]:
    return [(m.seq, m.role, m.status, m.content) for m in rows]


def process(make_client: MakeClient, sim: SimulatorProcess, busy_timeout_s: float) -> ChatService:
    """A stand-in for one gateway process: its own LLM client, locks and caches."""
    return ChatService(make_client(sim.base_url), Exchanges(busy_timeout_s=busy_timeout_s))


async def test_a_second_process_waits_for_the_pending_reply_then_sends(
    shared_db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    one, two = process(make_client, sim, scaled(20)), process(make_client, sim, scaled(20))
    # The first reply takes a while: long enough for the checks below on a loaded machine.
    faults.add({"X-Sim-TTFT-Ms": str(int(scaled(3) * 1000))}, times=1)

    first = asyncio.create_task(one.send(party.says("first")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)
    second = asyncio.create_task(two.send(party.says("second")))
    await asyncio.sleep(0.3)

    # The second process is waiting: it stored nothing and has not called the model.
    assert not second.done()
    assert summary(await stored_of(party)) == [
        (1, "user", "complete", "first"),
        (2, "assistant", "pending", ""),
    ]
    assert (await sim.stats_async())["chat_in_flight"] == 1

    reply_one = await first
    reply_two = await asyncio.wait_for(second, scaled(30))
    assert reply_one.completed_at is not None
    assert reply_two.created_at >= reply_one.completed_at
    rows = await stored_of(party)
    assert summary(rows) == [
        (1, "user", "complete", "first"),
        (2, "assistant", "complete", reply_one.content),
        (3, "user", "complete", "second"),
        (4, "assistant", "complete", reply_two.content),
    ]
    assert (rows[1], rows[3]) == (reply_one, reply_two)
    # The second reply was asked with the first exchange as history.
    body = (await sim.stats_async())["last_chat_request"]["body"]
    assert body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": reply_one.content},
        {"role": "user", "content": "second"},
    ]


async def test_past_the_busy_timeout_the_second_process_gets_conversation_busy(
    shared_db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    one, two = process(make_client, sim, 10), process(make_client, sim, 0.3)
    faults.add({"X-Sim-Fault": "hang"}, times=1)
    hung = asyncio.create_task(one.send(party.says("first")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)

    started = time.monotonic()
    with pytest.raises(ConversationBusyError) as info:
        await two.send(party.says("second"))
    waited = time.monotonic() - started
    assert 0.3 <= waited < 2.0
    assert (info.value.status_code, info.value.code) == (409, "conversation_busy")
    assert info.value.details == {"conversation_id": str(party.conversation_id)}
    with pytest.raises(ConversationBusyError):
        await anext(two.stream(party.says("second, streamed")))
    # Refused claims store nothing: no orphan user turn.
    assert summary(await stored_of(party)) == [
        (1, "user", "complete", "first"),
        (2, "assistant", "pending", ""),
    ]

    hung.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hung
    retried = await two.send(party.says("second"))
    rows = await stored_of(party)
    assert summary(rows) == [
        (1, "user", "complete", "first"),
        (2, "assistant", "cancelled", ""),
        (3, "user", "complete", "second"),
        (4, "assistant", "complete", retried.content),
    ]
    assert [m.role for m in rows] == ["user", "assistant"] * 2


async def test_concurrent_sends_from_two_processes_stay_paired(
    shared_db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    faults.add({"X-Sim-TTFT-Ms": "40"})
    one, two = process(make_client, sim, 20), process(make_client, sim, 20)
    sends = [(one if index % 2 else two).send(party.says(f"turn {index}")) for index in range(6)]
    replies = await asyncio.gather(*sends)

    rows = await stored_of(party)
    assert [m.seq for m in rows] == list(range(1, 13))
    assert [m.role for m in rows] == ["user", "assistant"] * 6
    assert all(m.status == "complete" for m in rows)
    assert {m.id for m in rows[1::2]} == {reply.id for reply in replies}
    # Each send's reply follows its own user turn.
    by_seq = {m.seq: m for m in rows}
    for index, reply in enumerate(replies):
        assert by_seq[reply.seq - 1].content == f"turn {index}"


async def test_a_stranger_is_refused_before_any_wait(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    party = await new_party()
    stranger = await new_key("stranger")
    # Another process's reply is pending in the conversation.
    pending = await Exchanges(busy_timeout_s=0).begin(party.says("mine"))
    chat = process(make_client, sim, 5)

    started = time.monotonic()
    with pytest.raises(NotFoundError) as info:
        await chat.send(party.says("peek", owner=stranger))
    with pytest.raises(NotFoundError):
        await anext(chat.stream(party.says("peek, streamed", owner=stranger)))
    assert time.monotonic() - started < 5 / 2  # not the busy timeout's 5 s: refused at once
    assert info.value.details == {"id": str(party.conversation_id)}

    # The owner, by contrast, waits (here: a short timeout, then busy).
    started = time.monotonic()
    with pytest.raises(ConversationBusyError):
        await process(make_client, sim, 0.2).send(party.says("me again"))
    assert time.monotonic() - started >= 0.2

    assert summary(await stored_of(party)) == [
        (1, "user", "complete", "mine"),
        (2, "assistant", "pending", ""),
    ]
    assert (await stored_of(party))[1].id == pending.assistant_message.id
    assert (await sim.stats_async())["total_requests"] == 0


async def test_a_stranger_does_not_queue_behind_the_owners_lock(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    """In one process the owner's in-flight send holds the conversation's lock; a
    stranger's send to it is refused at once instead of waiting for that lock."""
    party = await new_party()
    stranger = await new_key("stranger")
    chat = process(make_client, sim, 5)
    faults.add({"X-Sim-Fault": "hang"}, times=1)
    owners = asyncio.create_task(chat.send(party.says("mine")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)

    started = time.monotonic()
    with pytest.raises(NotFoundError):
        await chat.send(party.says("peek", owner=stranger))
    assert time.monotonic() - started < 5 / 2  # not the busy timeout's 5 s
    assert not owners.done()

    owners.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await owners
    assert summary(await stored_of(party)) == [
        (1, "user", "complete", "mine"),
        (2, "assistant", "cancelled", ""),
    ]


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "streamed"])
async def test_a_send_queued_in_the_same_process_is_busy_after_the_send_lock_timeout(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient, streamed: bool
) -> None:
    """Behind a long reply in the same process, a send waits no longer than the busy
    timeout (as it would across processes), then is told the conversation is busy."""
    party = await new_party()
    chat = process(make_client, sim, 0.5)
    faults.add({"X-Sim-Fault": "hang"}, times=1)
    first = asyncio.create_task(chat.send(party.says("long one")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)

    async def queued() -> object:
        if streamed:
            return await anext(chat.stream(party.says("queued")))
        return await chat.send(party.says("queued"))

    started = time.monotonic()
    with pytest.raises(ConversationBusyError) as refused:
        await queued()
    waited = time.monotonic() - started
    assert 0.4 < waited < 3, waited
    assert refused.value.retry_after_s is not None
    assert not first.done()  # the first reply goes on, untouched

    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    # Nothing of the queued send was stored.
    assert [m.content for m in await stored_of(party)] == ["long one", ""]


async def test_a_strangers_lookup_is_never_served_from_the_owners_memory(
    db: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory remembers a conversation for its owner only: a stranger's lookup of
    it runs the same query as a lookup of an id that does not exist, so a 404 takes as long
    either way (no timing tells the stranger the conversation exists)."""
    from functions.core.chat import directory as directory_module
    from functions.core.db.sql import fetch as real_fetch

    party = await new_party()
    stranger = await new_key("stranger")
    directory = directory_module.ConversationDirectory()
    queries: list[str] = []

    async def counting_fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
        queries.append(sql)
        return await real_fetch(sql, *args)

    monkeypatch.setattr(directory_module, "fetch", counting_fetch)
    await directory.config_name(party.owner, party.conversation_id)
    await directory.config_name(party.owner, party.conversation_id)
    assert len(queries) == 1  # the owner's second lookup is remembered

    for _ in range(2):
        with pytest.raises(NotFoundError):
            await directory.config_name(stranger, party.conversation_id)
        with pytest.raises(NotFoundError):
            await directory.config_name(stranger, uuid.uuid4())
    assert len(queries) == 5  # every stranger's lookup asked the database, alike
    assert len(set(queries)) == 1
