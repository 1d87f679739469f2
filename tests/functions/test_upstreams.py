"""``GET /v1/upstreams``: each upstream's latest recorded verdict and its last checks (admin).

In this process (ASGI, no socket), mounted in the gateway, on PostgreSQL and SQLite; the
verdicts are recorded with the service the health-check flow uses.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.health import service as health
from functions.core.llm.client import LLMClient
from functions.core.settings import Settings
from functions.upstreams.app import create_app
from tests.core.health.support import probed
from tests.support import process
from tests.support.databases import sqlite_url
from tests.support.inprocess import InProcessGateway, inprocess_gateway, inprocess_settings
from tests.support.process import REPO_ROOT
from tests.support.simulator import SimulatorProcess, free_port, running_simulator

GONE = "http://10.0.0.9:8000/v1"  # checked once, no longer configured


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", "upstreams-model") as process:
        yield process


@pytest.fixture
async def gateway(
    shared_db: Engine[Any], pg_url: str, sqlite_dir: Path, upstream: SimulatorProcess
) -> AsyncIterator[InProcessGateway]:
    url = pg_url if isinstance(shared_db, PostgresEngine) else sqlite_url(sqlite_dir)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = inprocess_settings(url, [upstream.base_url, dead])
    async with LLMClient.from_settings(settings) as llm, inprocess_gateway(settings, llm=llm) as gw:
        yield gw


def configured(gateway: InProcessGateway) -> list[str]:
    settings: Settings = gateway.app.state.settings
    return list(settings.llm_urls)


async def test_latest_verdict_and_last_checks_per_upstream(gateway: InProcessGateway) -> None:
    up, dead = configured(gateway)
    now = datetime.now(UTC)
    await health.record([probed(GONE)], checked_at=now - timedelta(days=1))
    await health.record(
        [probed(up), probed(dead, healthy=False)], checked_at=now - timedelta(minutes=2)
    )
    await health.record(
        [probed(up), probed(dead, healthy=False)], checked_at=now - timedelta(minutes=1)
    )
    await health.record([probed(up, healthy=False)], checked_at=now)

    response = await gateway.admin.get("/v1/upstreams")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["url"] for item in data] == [up, dead, GONE]  # configured first, in order
    first, second, gone = data
    assert [item["configured"] for item in data] == [True, True, False]
    assert first["state"] in {"up", "down"}  # this process's routing, as the watcher has it
    assert gone["state"] is None
    assert first["latest"]["status"] == "down"
    assert [check["status"] for check in first["checks"]] == ["down", "ok", "ok"]
    assert first["checks"][0] == first["latest"]
    assert [check["status"] for check in second["checks"]] == ["down", "down"]
    assert [item["steering"] for item in data] == [True, True, False]  # a day old: no
    assert set(first["latest"]) == {
        "id",
        "checked_at",
        "upstream",
        "status",
        "latency_ms",
        "models",
        "gauges",
        "is_simulator",
        "error",
    }

    response = await gateway.admin.get("/v1/upstreams", params={"checks": 1})
    assert [len(item["checks"]) for item in response.json()["data"]] == [1, 1, 1]


async def test_an_upstream_never_checked_is_listed_without_checks(
    gateway: InProcessGateway,
) -> None:
    response = await gateway.admin.get("/v1/upstreams")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["url"] for item in data] == configured(gateway)
    assert all(item["latest"] is None and item["checks"] == [] for item in data)
    assert not any(item["steering"] for item in data)


async def test_admin_only_and_bounded(gateway: InProcessGateway) -> None:
    chat = await gateway.caller("chat-only")
    response = await chat.http.get("/v1/upstreams")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert (await gateway.client(None).get("/v1/upstreams")).status_code == 401
    for bad in ({"checks": 0}, {"checks": 101}, {"checks": "x"}, {"limit": 5}):
        response = await gateway.admin.get("/v1/upstreams", params=bad)
        assert response.status_code == 400, (bad, response.text)
    schema = (await gateway.admin.get("/schema/openapi.json")).json()
    assert "/v1/upstreams" in schema["paths"]


def test_runs_alone_as_its_own_function() -> None:
    app = create_app(Settings())
    assert "/v1/upstreams" in {route.path for route in app.routes}


def test_imports_no_flow_library() -> None:
    """It reads what the flows record; it never loads Prefect (a fresh interpreter)."""
    code = "import functions.upstreams.app, sys; print(' '.join(sorted(sys.modules)))"
    result = process.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert [name for name in loaded if name.split(".")[0] in {"prefect", "flows"}] == []
