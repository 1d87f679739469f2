"""Ready means every migration is applied: tables alone are not enough (a database rolled
back by one migration, or not yet upgraded to this release, fails every /v1 call)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from functions.core.db.migrate import known_migrations
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.process import HOST, free_port, switchboard_cli


@pytest.fixture(params=["postgres", "sqlite"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "postgres":
        url = await create_postgres_database("switchboard_pending")
        yield url
        await drop_postgres_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'pending.sqlite'}"


async def test_a_database_one_migration_behind_is_not_ready(database_url: str) -> None:
    assert switchboard_cli(database_url, "db", "migrate").returncode == 0
    newest = known_migrations()[-1]
    rolled = switchboard_cli(database_url, "db", "rollback", "--to", newest, "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back 1 migration(s)" in rolled.stdout

    with GatewayProcess(database_url, [f"http://{HOST}:{free_port()}/v1"]) as app:
        async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
            response = await client.get("/readyz")
            assert response.status_code == 503, response.text
            database = response.json()["database"]
            assert database["status"] == "not_migrated"
            assert database["code"] == "database_not_migrated"
            assert "1 migration(s) not applied" in database["error"]
            assert "switchboard db migrate" in database["error"]

            assert switchboard_cli(database_url, "db", "migrate").returncode == 0
            response = await client.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["database"]["status"] == "ok"
