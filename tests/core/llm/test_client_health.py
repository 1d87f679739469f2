"""Active health: probing upstreams, feeding the result back into routing, stats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from functions.core.llm.errors import LLMUnavailableError
from functions.core.llm.schemas import ChatDelta
from tests.core.llm.conftest import MODEL, Faults, MakeClient, chat_request
from tests.core.llm.scripted_server import closed_port_url
from tests.support.simulator import SimulatorProcess, async_running_simulator


@pytest.fixture
async def busy_sim() -> AsyncIterator[SimulatorProcess]:
    """One request generates at a time; the rest wait in vLLM's queue."""
    async with async_running_simulator(
        "--max-num-seqs", "1", "--itl-ms", "50", "--tokens", "200"
    ) as sim:
        yield sim


async def test_health_of_a_live_and_a_dead_upstream(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    dead_url = closed_port_url()
    client = make_client(fresh.base_url, dead_url)
    live, dead = await client.health()
    assert (live.reachable, live.healthy, live.health_status) == (True, True, 200)
    assert live.models == [MODEL]
    assert live.is_simulator
    assert live.version is not None
    assert live.num_requests_running == 0
    assert live.num_requests_waiting == 0
    assert live.kv_cache_usage_perc is not None
    assert live.error is None
    assert (dead.reachable, dead.healthy, dead.health_status, dead.url) == (
        False,
        False,
        None,
        dead_url,
    )
    assert dead.error is not None
    assert dead.error.startswith("/health:")
    # Probing taught the client the model list.
    assert client.stats().upstreams[0].models == [MODEL]


async def test_gauges_while_busy(make_client: MakeClient, busy_sim: SimulatorProcess) -> None:
    client = make_client(busy_sim.base_url)
    streams = [client.stream_chat(chat_request()) for _ in range(3)]
    first = await anext(streams[0])
    assert isinstance(first, ChatDelta)
    pending = [asyncio.create_task(anext(s)) for s in streams[1:]]
    for _ in range(100):
        (health,) = await client.health()
        if health.num_requests_waiting == 2:
            break
        await asyncio.sleep(0.02)
    assert (health.num_requests_running, health.num_requests_waiting) == (1, 2)
    assert health.kv_cache_usage_perc is not None
    assert health.kv_cache_usage_perc > 0
    stats = client.stats().upstreams[0]
    assert (stats.running, stats.queue_depth, stats.in_flight) == (1, 2, 3)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for stream in streams:
        await stream.aclose()


async def test_apply_health_routes_around_an_unhealthy_upstream(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    async with async_running_simulator("--tokens", "2") as other:
        client = make_client(fresh.base_url, other.base_url)
        fresh.set_healthy(False)
        results = await client.health()
        assert [(r.healthy, r.health_status) for r in results] == [(False, 503), (True, 200)]
        client.apply_health(results)
        assert [u.state for u in client.stats().upstreams] == ["down", "up"]
        urls = {(await client.chat(chat_request())).upstream_url for _ in range(4)}
        assert urls == {other.base_url}

        fresh.set_healthy(True)
        client.apply_health(await client.health())
        assert [u.state for u in client.stats().upstreams] == ["up", "up"]


async def test_everything_marked_down(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    client.mark_down(fresh.base_url)
    with pytest.raises(LLMUnavailableError):
        await client.chat(chat_request())


async def test_list_models_survives_a_dead_upstream(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(closed_port_url(), fresh.base_url)
    models = await client.list_models()
    assert [(m.id, m.max_model_len, m.upstreams) for m in models] == [
        (MODEL, 256, [f"127.0.0.1:{fresh.port}"])
    ]
    with pytest.raises(LLMUnavailableError):
        await make_client(closed_port_url()).list_models()


async def test_stats_count_requests_and_in_flight(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-ITL-Ms": "30", "X-Sim-Tokens": "50"})
    client = make_client(fresh.base_url, llm_max_inflight_per_upstream=7)
    stream = client.stream_chat(chat_request())
    await anext(stream)
    stats = client.stats()
    assert (stats.in_flight, stats.max_in_flight) == (1, 7)
    upstream = stats.upstreams[0]
    assert (upstream.state, upstream.in_flight, upstream.requests_total) == ("up", 1, 1)
    await stream.aclose()
    assert client.stats().in_flight == 0
