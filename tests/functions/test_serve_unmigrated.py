"""`switchboard serve` on a database that was never migrated says so once, in one line,
before it serves (and then serves: readiness fails and /v1 answers 503 until it is)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from functions.core.db.migrate import known_migrations
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.process import HOST, free_port


@pytest.fixture(params=["postgres", "sqlite"])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "postgres":
        url = await create_postgres_database("switchboard_unmigrated")
        yield url
        await drop_postgres_database(url)
    else:
        path = tmp_path / "empty.sqlite"
        path.touch(mode=0o600)  # a file, but no tables
        yield f"sqlite:///{path}"


async def test_an_unmigrated_database_is_named_once_before_serving(empty_database: str) -> None:
    # A lease period of 3 s: the heartbeat, the sweep and the replies' bookkeeping each run
    # every second, and must not repeat the missing table every time.
    env = {"SWITCHBOARD_LEASE_TTL_S": "3"}
    with GatewayProcess(empty_database, [f"http://{HOST}:{free_port()}/v1"], env=env) as app:
        async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
            ready = await client.get("/readyz")
            deadline = asyncio.get_running_loop().time() + 60
            while app.log_text().count('"sweep.') == 0:  # the sweep has run and failed
                assert asyncio.get_running_loop().time() < deadline, app.log_text()
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # three more periods of every loop
        log = app.log_text()
    assert ready.status_code == 503, ready.text
    total = len(known_migrations())
    warning = (
        f"is not migrated ({total} of {total} migration(s) not applied): readiness fails and "
        "/v1 answers 503 until `switchboard db migrate` is run"
    )
    assert log.count(warning) == 1, log
    assert log.index(warning) < log.index("function.started")
    # Each background loop says it once, and nothing names the missing table again.
    assert log.count("database.not_migrated") <= 3, log
    assert "process_lease" not in log, log
    assert "Traceback" not in log, log
