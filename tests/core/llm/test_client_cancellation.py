"""A consumer that stops listening makes the upstream stop generating, right away."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from functions.core.llm.schemas import ChatDelta
from tests.core.llm.conftest import (
    LONG_STREAM,
    Faults,
    MakeClient,
    assert_aborted,
    chat_request,
    sim_stats,
    wait_for_stats,
)
from tests.support.simulator import SimulatorProcess


async def test_aclose_on_the_stream(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    events = client.stream_chat(chat_request())
    assert isinstance(await anext(events), ChatDelta)
    assert isinstance(await anext(events), ChatDelta)
    assert (await sim_stats(fresh))["chat_in_flight"] == 1
    assert client.stats().in_flight == 1
    await events.aclose()
    await assert_aborted(fresh, client)


async def test_breaking_out_of_aclosing(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    async with contextlib.aclosing(client.stream_chat(chat_request())) as events:
        async for _ in events:
            break
    await assert_aborted(fresh, client)


async def test_cancelling_the_consuming_task(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream_chat(chat_request()):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()  # e.g. the gateway's own HTTP client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_aborted(fresh, client)


async def test_cancelling_while_waiting_for_the_first_token(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-TTFT-Ms": "20000"})
    client = make_client(fresh.base_url)
    task = asyncio.create_task(anext(client.stream_chat(chat_request())))
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_aborted(fresh, client)


async def test_cancelling_a_non_streaming_chat(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    task = asyncio.create_task(client.chat(chat_request()))
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_aborted(fresh, client)
