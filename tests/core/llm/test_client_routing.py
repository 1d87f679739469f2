"""Several upstreams: load spread, passive ejection (unreachable, or an engine dead behind a
live HTTP server) and return, model routing, mark down/up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMError, LLMOverloadedError
from tests.core.llm.conftest import Faults, MakeClient, chat_request, sim_stats, wait_for_stats
from tests.support.simulator import SimulatorProcess, async_running_simulator

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="session")
async def sim_pair() -> AsyncIterator[tuple[SimulatorProcess, SimulatorProcess]]:
    async with (
        async_running_simulator("--tokens", "4") as a,
        async_running_simulator("--tokens", "4") as b,
    ):
        yield a, b


@pytest.fixture
async def pair(
    sim_pair: tuple[SimulatorProcess, SimulatorProcess],
) -> tuple[SimulatorProcess, SimulatorProcess]:
    """Two identical simulators, running (a test may have stopped one), healthy, with zeroed
    counters."""
    for sim in sim_pair:
        await asyncio.to_thread(sim.start)
        await sim.fresh()
    return sim_pair


async def chats(sim: SimulatorProcess) -> int:
    count: int = (await sim_stats(sim))["paths"].get(CHAT, 0)
    return count


async def served_by(client: LLMClient, n: int, model: str | None = None) -> list[str]:
    return [(await client.chat(chat_request(model=model))).upstream_url for _ in range(n)]


async def test_load_is_spread(
    make_client: MakeClient, pair: tuple[SimulatorProcess, SimulatorProcess], faults: Faults
) -> None:
    a, b = pair
    client = make_client(a.base_url, b.base_url)
    urls = await served_by(client, 10)
    assert urls.count(a.base_url) == urls.count(b.base_url) == 5

    # Concurrent requests go to the least busy upstream.
    faults.add({"X-Sim-TTFT-Ms": "200"})
    results = await asyncio.gather(*(client.chat(chat_request()) for _ in range(8)))
    assert sorted(r.upstream_url for r in results).count(a.base_url) == 4
    assert (await chats(a), await chats(b)) == (9, 9)


async def test_a_dead_upstream_is_ejected_and_comes_back(
    make_client: MakeClient, pair: tuple[SimulatorProcess, SimulatorProcess]
) -> None:
    a, b = pair
    client = make_client(
        a.base_url, b.base_url, llm_eject_after_failures=2, llm_eject_cooldown_s=0.3
    )
    await asyncio.to_thread(b.stop)

    urls = await served_by(client, 8)  # all succeed: refused connections are retried on a
    assert set(urls) == {a.base_url}
    stats_b = client.stats().upstreams[1]
    assert (stats_b.state, stats_b.connect_failures_total, stats_b.ejections_total) == (
        "ejected",
        2,
        1,
    )

    await asyncio.to_thread(b.start)
    await asyncio.sleep(0.35)  # the cooldown
    assert client.stats().upstreams[1].state == "half_open"
    urls = await served_by(client, 4)
    assert b.base_url in urls
    assert client.stats().upstreams[1].state == "up"


async def test_an_engine_dead_behind_a_live_server_is_ejected_after_consecutive_5xx(
    make_client: MakeClient, pair: tuple[SimulatorProcess, SimulatorProcess]
) -> None:
    a, b = pair
    # b's HTTP server answers, its engine is dead: chat 500, /health 503 (vLLM >= 0.11).
    await asyncio.to_thread(b.set_healthy, False)
    client = make_client(
        a.base_url, b.base_url, llm_eject_after_failures=3, llm_eject_cooldown_s=60
    )
    outcomes: list[str] = []
    for _ in range(20):
        try:
            outcomes.append((await client.chat(chat_request())).upstream_url)
        except LLMError as exc:  # a 500 is not retried: the engine may have started on it
            outcomes.append(f"failed at {exc.details['upstream_url']}")
    # Exactly the threshold's sends failed; every send after the third went to a.
    assert outcomes.count(f"failed at {b.base_url}") == 3
    last_failure = max(i for i, outcome in enumerate(outcomes) if outcome.startswith("failed"))
    assert set(outcomes[last_failure + 1 :]) == {a.base_url}
    assert last_failure < 6  # round robin: b's third turn came within six sends
    assert await chats(b) == 3
    stats_b = client.stats().upstreams[1]
    assert (stats_b.state, stats_b.ejections_total, stats_b.connect_failures_total) == (
        "ejected",
        1,
        0,
    )


async def test_an_answer_resets_the_count_of_consecutive_5xx(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    client = make_client(fresh.base_url, llm_eject_after_failures=3, llm_eject_cooldown_s=60)

    async def fail(times: int) -> None:
        faults.add({"X-Sim-Fault": "500"}, times=times)
        for _ in range(times):
            with pytest.raises(LLMError):
                await client.chat(chat_request())

    await fail(2)
    assert client.stats().upstreams[0].consecutive_failures == 2
    assert (await client.chat(chat_request())).content  # an answer: the count starts over
    assert client.stats().upstreams[0].consecutive_failures == 0
    await fail(2)
    assert client.stats().upstreams[0].state == "up"
    # A 4xx is an answer too: the request's fault, not the upstream's.
    with pytest.raises(LLMError):
        await client.chat(chat_request(max_tokens=100_000))
    assert client.stats().upstreams[0].consecutive_failures == 0
    await fail(3)
    assert client.stats().upstreams[0].state == "ejected"


async def test_a_failed_trial_ejects_again(
    make_client: MakeClient, pair: tuple[SimulatorProcess, SimulatorProcess]
) -> None:
    a, b = pair
    client = make_client(
        a.base_url, b.base_url, llm_eject_after_failures=1, llm_eject_cooldown_s=0.2
    )
    await asyncio.to_thread(b.stop)
    await served_by(client, 3)
    await asyncio.sleep(0.25)
    assert set(await served_by(client, 3)) == {a.base_url}
    assert client.stats().upstreams[1].ejections_total == 2


async def test_requests_go_to_an_upstream_serving_their_model(make_client: MakeClient) -> None:
    async with (
        async_running_simulator("--model", "alpha") as a,
        async_running_simulator("--model", "beta", "--model", "shared") as b,
    ):
        client = make_client(a.base_url, b.base_url)
        assert set(await served_by(client, 4, "alpha")) == {a.base_url}
        assert set(await served_by(client, 4, "beta")) == {b.base_url}
        assert set(await served_by(client, 2, "shared")) == {b.base_url}
        assert (await chats(a), await chats(b)) == (4, 6)
        models = {m.id: m.upstreams for m in await client.list_models()}
        assert models == {
            "alpha": [f"127.0.0.1:{a.port}"],
            "beta": [f"127.0.0.1:{b.port}"],
            "shared": [f"127.0.0.1:{b.port}"],
        }


async def test_mark_down_and_up(
    make_client: MakeClient, pair: tuple[SimulatorProcess, SimulatorProcess]
) -> None:
    a, b = pair
    client = make_client(a.base_url, b.base_url)
    client.mark_down(a.root_url)
    assert set(await served_by(client, 4)) == {b.base_url}
    assert client.stats().upstreams[0].state == "down"
    client.mark_up(a.base_url)
    assert set(await served_by(client, 4)) == {a.base_url, b.base_url}


async def test_caps_apply_per_upstream(
    make_client: MakeClient, pair: tuple[SimulatorProcess, SimulatorProcess], faults: Faults
) -> None:
    a, b = pair
    faults.add({"X-Sim-Fault": "hang"}, times=2)
    client = make_client(a.base_url, b.base_url, llm_max_inflight_per_upstream=1)
    hanging = [asyncio.create_task(client.chat(chat_request())) for _ in range(2)]
    for sim in pair:
        await wait_for_stats(sim, lambda s: s["chat_in_flight"] == 1)
    assert [u.in_flight for u in client.stats().upstreams] == [1, 1]
    with pytest.raises(LLMOverloadedError):
        await client.chat(chat_request())
    hanging[0].cancel()
    await asyncio.gather(*hanging[:1], return_exceptions=True)
    assert (await client.chat(chat_request())).content  # a slot is free again
    hanging[1].cancel()
    await asyncio.gather(*hanging, return_exceptions=True)
