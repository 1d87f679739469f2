"""Deleting a conversation while its reply is generated: the generation is aborted and the
client is told, in the deleting process and (PostgreSQL) in every other one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.recorder import ConversationGoneError
from functions.core.chat.schemas import MessageStarted, ReplyDelta, ReplyFailed
from functions.core.chat.service import ChatService
from functions.core.db.engine import use_engine
from functions.core.db.notifications import PostgresListener
from functions.core.db.sql import fetch
from functions.core.liveness.inflight import InFlight
from functions.core.settings import Settings
from tests.core.chat.conftest import LONG_STREAM, MakeClient, new_party
from tests.core.llm.conftest import Faults
from tests.support.simulator import SimulatorProcess


async def aborted(sim: SimulatorProcess) -> None:
    await sim.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)


async def test_a_stream_ends_with_an_error_event_and_the_upstream_stops(
    shared_db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    party = await new_party()
    chat = ChatService(make_client(sim.base_url))
    events = chat.stream(party.says("Tell me a long story"))
    assert isinstance(await anext(events), MessageStarted)
    assert isinstance(await anext(events), ReplyDelta)

    started = asyncio.get_running_loop().time()
    await chat.delete_conversation(party.owner, party.conversation_id)
    rest = [event async for event in events]
    assert asyncio.get_running_loop().time() - started < 2
    failed = [event for event in rest if isinstance(event, ReplyFailed)]
    assert len(failed) == 1
    assert rest[-1] is failed[0]
    assert failed[0].error["code"] == "not_found"
    assert failed[0].message is None
    await aborted(sim)
    assert (
        await fetch("SELECT id FROM message WHERE conversation = {}", party.conversation_id) == []
    )


async def test_a_non_streamed_send_is_a_404_at_once_not_after_the_generation(
    shared_db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    party = await new_party()
    chat = ChatService(make_client(sim.base_url))
    sending = asyncio.create_task(chat.send(party.says("Tell me a long story")))
    await sim.wait_for_async(lambda s: s["in_flight"] == 1)
    await chat.delete_conversation(party.owner, party.conversation_id)
    with pytest.raises(ConversationGoneError):
        await asyncio.wait_for(sending, 2)
    await aborted(sim)


async def test_another_process_hears_the_deletion(
    pg_url: str,
    pg_engine: Engine[Any],
    sim: SimulatorProcess,
    make_client: MakeClient,
    faults: Faults,
) -> None:
    """Two services stand for two processes; only the listener connects them."""
    use_engine(pg_engine)
    faults.add(LONG_STREAM)
    party = await new_party()
    in_flight = InFlight(grace_s=Settings().shutdown_grace_s)
    listener = PostgresListener(pg_url)
    listener.subscribe(in_flight.deletions())
    listener.start()
    try:
        await asyncio.wait_for(listener.listening.wait(), 5)
        generating = ChatService(make_client(sim.base_url), in_flight=in_flight)
        deleting = ChatService(make_client(sim.base_url))
        events = generating.stream(party.says("Tell me a long story"))
        assert isinstance(await anext(events), MessageStarted)
        assert isinstance(await anext(events), ReplyDelta)
        await deleting.delete_conversation(party.owner, party.conversation_id)
        rest = [event async for event in events]
        assert isinstance(rest[-1], ReplyFailed)
        assert rest[-1].error["code"] == "not_found"
        await aborted(sim)
    finally:
        await listener.stop()
        from tests.conftest import truncate_all

        await truncate_all(pg_engine)
