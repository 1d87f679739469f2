"""A flow run's verdict steers routing in every serving process, both ways.

Two gateways (separate processes) on PostgreSQL route over two simulators. Upstream A's
engine dies; one health-check run records it ``down`` and both gateways stop sending to
it within a moment (NOTIFY, no probing of their own): every send then goes to B, and A
sees no chat request at all. A recovers; the next run records it ``ok`` and both gateways
send to it again. Requests are counted at each simulator (``/sim/stats``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from flows.health_check import HealthCheckReport, health_check
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from tests.flows.conftest import run_flow, wait_for
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess

CHAT = "/v1/chat/completions"
SENDS = 6


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[SimulatorProcess, SimulatorProcess]]:
    a = SimulatorProcess("--model", "sim-model", "--tokens", "3")
    b = SimulatorProcess("--model", "sim-model", "--tokens", "3")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
async def gateways(
    flows_db: str, sims: tuple[SimulatorProcess, SimulatorProcess]
) -> AsyncIterator[list[GatewayProcess]]:
    started = [GatewayProcess(flows_db, [sim.base_url for sim in sims]) for _ in range(2)]
    try:
        await asyncio.gather(*(asyncio.to_thread(g.start) for g in started))
        yield started
    finally:
        for gateway in started:
            await asyncio.to_thread(gateway.close)
        for sim in sims:
            sim.set_healthy(True)


def chats(sim: SimulatorProcess) -> int:
    return int(sim.stats()["paths"].get(CHAT, 0))


async def routing_state(gateway: GatewayProcess, url: str) -> str:
    async with httpx.AsyncClient(base_url=gateway.root_url, timeout=5) as client:
        ready = (await client.get("/readyz")).json()
    return next(u["state"] for u in ready["llm"]["upstreams"] if u["url"] == url)


async def until_every_gateway_says(
    gateways: list[GatewayProcess], url: str, state: str
) -> datetime:
    """When every gateway first routed to ``url`` as ``state`` (polled every 10 ms)."""

    async def all_agree() -> bool:
        states = await asyncio.gather(*(routing_state(g, url) for g in gateways))
        return all(s == state for s in states)

    await wait_for(all_agree, within=30, interval=0.01)
    return datetime.now(UTC)


def routed_at(gateway: GatewayProcess, event: str) -> datetime:
    """When the gateway last logged ``event`` (its watcher marking an upstream)."""
    times = [
        datetime.fromisoformat(line["timestamp"])
        for line in map(json.loads, filter(None, gateway.log_text().splitlines()))
        if line.get("event") == event
    ]
    assert times, f"{event} not logged"
    return max(times)


async def check_and_watch(
    gateways: list[GatewayProcess], url: str, state: str
) -> tuple[HealthCheckReport, float]:
    """Run the health check while watching the gateways; the report, and the seconds from
    the verdict's timestamp (taken before it is written) until the last gateway changed
    its routing (by the gateways' own log lines)."""
    watching = asyncio.create_task(until_every_gateway_says(gateways, url, state))
    report = (await run_flow(health_check)).result
    await watching
    event = "llm_upstream_marked_down" if state == "down" else "llm_upstream_marked_up"
    last = max(routed_at(gateway, event) for gateway in gateways)
    return report, (last - report.checked_at).total_seconds()


async def send_many(gateway: GatewayProcess, secret: str, count: int) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=gateway.root_url, headers=headers, timeout=15) as api:
        conversation = (await api.post("/v1/conversations", json={})).json()["id"]
        for i in range(count):
            response = await api.post(
                f"/v1/conversations/{conversation}/messages", json={"content": f"hello {i}"}
            )
            assert response.status_code == 201, response.text


async def test_every_gateway_follows_the_flow_down_and_back_up(
    gateways: list[GatewayProcess],
    sims: tuple[SimulatorProcess, SimulatorProcess],
    flows_db: str,
    flow_env: Callable[..., None],
) -> None:
    a, b = sims
    flow_env(database_url=flows_db, llm_urls=f"{a.base_url},{b.base_url}", log_format="json")
    admin = await keys.create_key(ApiKeyCreate(name="admin", scopes=["admin", "chat"]))
    async with httpx.AsyncClient(
        base_url=gateways[0].root_url, headers={"Authorization": f"Bearer {admin.secret}"}
    ) as api:
        response = await api.post(
            "/v1/configs", json={"name": "sim", "model": "sim-model", "is_default": True}
        )
        assert response.status_code == 201, response.text

    a.set_healthy(False)
    down, took_down = await check_and_watch(gateways, a.base_url, "down")
    assert {u.verdict.upstream: u.verdict.status for u in down.upstreams} == {
        a.base_url: "down",
        b.base_url: "ok",
    }

    a.reset()
    b.reset()
    for gateway in gateways:
        await send_many(gateway, admin.secret, SENDS)
    a.set_healthy(True)  # back, but no gateway may send to it before a verdict says so
    await send_many(gateways[0], admin.secret, 2)
    assert chats(a) == 0
    assert chats(b) == 2 * SENDS + 2

    up, took_up = await check_and_watch(gateways, a.base_url, "up")
    assert {u.verdict.upstream: u.verdict.status for u in up.upstreams} == {
        a.base_url: "ok",
        b.base_url: "ok",
    }
    for gateway in gateways:
        before = chats(a)
        await send_many(gateway, admin.secret, SENDS)
        assert chats(a) > before  # round robin over two: about half of them
    print(
        f"\nrouting: both gateways followed the verdict {took_down * 1000:.0f} ms (down) and "
        f"{took_up * 1000:.0f} ms (up) after its timestamp"
    )
    assert took_down < 5
    assert took_up < 5
