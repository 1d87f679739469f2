"""``/readyz`` reports and never steers: it calls no upstream, shows the recorded health
check of each upstream, and says when the database is not migrated or not there."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.migrate import migrate
from functions.core.health import service as health
from tests.core.health.support import probed
from tests.support.databases import create_postgres_database, drop_postgres_database, sqlite_url
from tests.support.gateway import GatewayProcess
from tests.support.process import free_port
from tests.support.simulator import async_running_simulator
from tests.support.timing import scaled


async def empty_database(backend: str, tmp_path: Path) -> str:
    if backend == "postgres":
        return await create_postgres_database("switchboard_ready")
    path = tmp_path / "empty.sqlite"
    path.touch()
    return sqlite_url(tmp_path, "empty.sqlite")


@pytest.fixture(params=["postgres", "sqlite"])
async def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    url = await empty_database(request.param, tmp_path)
    engine = engine_from_url(url)
    use_engine(engine)
    await migrate(engine)
    yield url
    if request.param == "postgres":
        await drop_postgres_database(url)


async def readyz(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_readiness_calls_no_upstream_and_reports_the_recorded_check(
    migrated_url: str,
) -> None:
    async with async_running_simulator("--model", "sim-model") as sim:
        with GatewayProcess(migrated_url, [sim.base_url]) as app:
            async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
                # Before any check is recorded: this process's own probe at start-up.
                first = await readyz(client)
                assert first["llm"]["status"] == "simulated"
                (upstream,) = first["llm"]["upstreams"]
                assert upstream["url"] == sim.base_url
                assert upstream["state"] == "up"
                assert upstream["last_check"]["source"] == "startup"
                assert upstream["last_check"]["status"] == "ok"
                assert upstream["last_check"]["steering"] is False

                before = (await sim.stats_async())["paths"]
                assert before.get("/version") == 1  # the start-up probe, and only it
                for _ in range(5):
                    await readyz(client)
                assert (await sim.stats_async())["paths"] == before

                # A checker elsewhere records the upstream down: readiness shows it at
                # once, and the process's routing follows (its watcher, not readiness).
                (verdict,) = await health.record([probed(sim.base_url, healthy=False)])
                ready = await readyz(client)
                check = ready["llm"]["upstreams"][0]["last_check"]
                assert check["source"] == "recorded"
                assert check["status"] == "down"
                assert check["steering"] is True
                assert check["error"] == verdict.error
                assert (ready["status"], ready["llm"]["status"]) == ("degraded", "down")
                deadline = time.monotonic() + scaled(30)
                while (await readyz(client))["llm"]["upstreams"][0]["state"] != "down":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)

                metrics = (await client.get("/metrics")).text
                labels = f'status="down",upstream="{sim.base_url}"'
                assert re.search(rf"switchboard_llm_upstream_health\{{{labels}\}} 1\.0", metrics)
                stamp = re.search(
                    r"switchboard_llm_upstream_health_checked_timestamp_seconds\{.*\} (\S+)",
                    metrics,
                )
                assert stamp is not None
                assert float(stamp[1]) == pytest.approx(verdict.checked_at.timestamp())

                await health.record([probed(sim.base_url, is_simulator=True)])
                deadline = time.monotonic() + scaled(30)
                while (ready := await readyz(client))["llm"]["upstreams"][0]["state"] != "up":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                assert ready["llm"]["status"] == "simulated"
                assert (await sim.stats_async())["paths"] == before


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_an_unmigrated_database_is_503_not_migrated(backend: str, tmp_path: Path) -> None:
    url = await empty_database(backend, tmp_path)
    try:
        with GatewayProcess(url, [f"http://127.0.0.1:{free_port()}/v1"]) as app:
            async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
                response = await client.get("/readyz")
                assert response.status_code == 503
                ready = response.json()
                assert ready["status"] == "unavailable"
                assert ready["database"]["status"] == "not_migrated"
                assert ready["database"]["code"] == "database_not_migrated"
                assert "switchboard db migrate" in ready["database"]["error"]
                assert ready["llm"]["status"] == "down"
                assert "cannot be read" in ready["llm"]["checks_error"]
    finally:
        if backend == "postgres":
            await drop_postgres_database(url)


async def test_with_the_database_down_it_still_reports_the_llm() -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    async with async_running_simulator("--model", "sim-model") as sim:
        with GatewayProcess(unreachable, [sim.base_url]) as app:
            async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
                response = await client.get("/readyz")
                assert response.status_code == 503
                ready = response.json()
                assert (ready["database"]["status"], ready["database"]["code"]) == (
                    "down",
                    "database_unavailable",
                )
                assert ready["llm"]["status"] == "simulated"
                assert ready["llm"]["upstreams"][0]["last_check"]["source"] == "startup"
                assert "cannot be read" in ready["llm"]["checks_error"]
