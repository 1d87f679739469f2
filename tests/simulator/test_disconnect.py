"""A client that goes away is noticed at once: nothing more is sent, the request counts as
aborted, and the in-flight count goes back to zero. The gateway's cancellation tests rely on it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.simulator.conftest import chat_body
from tests.simulator.rawhttp import RawConnection
from tests.support.simulator import SimulatorProcess, running_simulator

URL = "/v1/chat/completions"


async def abort_count(sim: SimulatorProcess) -> float:
    async with httpx.AsyncClient(base_url=sim.root_url) as http:
        text = (await http.get("/metrics")).text
    match = re.search(
        r'vllm:request_success_total\{model_name="sim-model",engine="0",'
        r'finished_reason="abort"\} (\S+)',
        text,
    )
    assert match
    return float(match.group(1))


async def test_disconnect_mid_stream(fresh: SimulatorProcess) -> None:
    conn = await RawConnection.post_json(
        fresh.port,
        URL,
        chat_body(stream=True),
        {"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "200"},
    )
    await conn.read_head()
    await conn.read_until(b'"content":"')  # the role chunk
    await conn.read_until(b'"content":"')  # a first token
    assert (await fresh.stats_async())["in_flight"] == 1
    await conn.close()
    stats = await fresh.wait_for_async(lambda s: s["in_flight"] == 0)
    assert stats["aborted"] == 1
    assert stats["chat_in_flight"] == 0
    assert await abort_count(fresh) == 1


async def test_disconnect_during_ttft(fresh: SimulatorProcess) -> None:
    for stream in (True, False):
        fresh.reset()
        conn = await RawConnection.post_json(
            fresh.port, URL, chat_body(stream=stream), {"X-Sim-TTFT-Ms": "30000"}
        )
        if stream:
            assert (await conn.read_head()).startswith(b"HTTP/1.1 200")  # headers come first
        else:
            await asyncio.sleep(0.1)
        assert (await fresh.stats_async())["in_flight"] == 1
        await conn.close()
        # Noticed long before the 30 s TTFT would have passed.
        stats = await fresh.wait_for_async(lambda s: s["in_flight"] == 0)
        assert stats["aborted"] == 1


async def test_httpx_client_closing_a_stream_aborts(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    headers = {"X-Sim-ITL-Ms": "20", "X-Sim-Tokens": "500"}
    async with client.stream("POST", URL, json=chat_body(stream=True), headers=headers) as resp:
        async for line in resp.aiter_lines():
            if '"content":"' in line and "role" not in line:
                break
    stats = await fresh.wait_for_async(lambda s: s["in_flight"] == 0)
    assert stats["aborted"] == 1


async def test_completed_requests_are_not_aborted(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    await client.post(URL, json=chat_body(stream=True), headers={"X-Sim-ITL-Ms": "1"})
    await client.post(URL, json=chat_body(), headers={"X-Sim-TTFT-Ms": "10"})
    stats = await fresh.stats_async()
    assert (stats["aborted"], stats["in_flight"]) == (0, 0)
    assert stats["total_requests"] == 2
    assert stats["paths"] == {URL: 2}


@pytest.fixture(scope="module")
def one_slot_sim() -> Iterator[SimulatorProcess]:
    with running_simulator("--max-num-seqs", "1") as process:
        yield process


async def test_requests_beyond_max_num_seqs_wait_in_the_queue(
    one_slot_sim: SimulatorProcess,
) -> None:
    async with httpx.AsyncClient(base_url=one_slot_sim.root_url) as http:
        slow = {"X-Sim-TTFT-Ms": "800"}
        started = asyncio.get_running_loop().time()
        first = asyncio.create_task(http.post(URL, json=chat_body(), headers=slow))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(http.post(URL, json=chat_body(), headers=slow))
        stats = await one_slot_sim.wait_for_async(lambda s: s["waiting"] == 1)
        assert stats["running"] == 1
        metrics = (await http.get("/metrics")).text
        assert 'vllm:num_requests_waiting{model_name="sim-model",engine="0"} 1.0' in metrics
        assert 'vllm:num_requests_running{model_name="sim-model",engine="0"} 1.0' in metrics
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        # The second one waited for the first before its own TTFT began.
        assert asyncio.get_running_loop().time() - started >= 1.6
        stats = await one_slot_sim.stats_async()
        assert (stats["running"], stats["waiting"]) == (0, 0)


async def test_disconnect_while_queued(one_slot_sim: SimulatorProcess) -> None:
    one_slot_sim.reset()
    async with httpx.AsyncClient(base_url=one_slot_sim.root_url) as http:
        holder = asyncio.create_task(
            http.post(URL, json=chat_body(), headers={"X-Sim-TTFT-Ms": "300"})
        )
        await asyncio.sleep(0.05)
        conn = await RawConnection.post_json(one_slot_sim.port, URL, chat_body())
        await one_slot_sim.wait_for_async(lambda s: s["waiting"] == 1)
        await conn.close()
        stats = await one_slot_sim.wait_for_async(lambda s: s["waiting"] == 0 and s["aborted"] == 1)
        assert stats["running"] == 1
        assert (await holder).status_code == 200
        # The slot is free again, not leaked by the one that left.
        assert (await http.post(URL, json=chat_body())).status_code == 200
        assert (await one_slot_sim.stats_async())["running"] == 0
