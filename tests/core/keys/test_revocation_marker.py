"""SQLite has no NOTIFY: a revocation by any process (the CLI, another worker) still reaches
every serving process at once, through the marker file next to the database."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.process import HOST, free_port, switchboard_cli


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "postgres":
        url = await create_postgres_database("switchboard_revoke")
        yield url
        await drop_postgres_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'revoke.sqlite'}"


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_key_revoked_from_the_cli_is_refused_by_running_servers_at_once(
    database_url: str, workers: int
) -> None:
    assert switchboard_cli(database_url, "db", "migrate").returncode == 0
    created = switchboard_cli(database_url, "keys", "create", "--name", "app", "--json")
    key = httpx.Response(200, content=created.stdout).json()
    headers = {"Authorization": f"Bearer {key['secret']}"}
    # A cache long enough that only a revocation that reaches the process can explain a 401.
    env = {"SWITCHBOARD_AUTH_CACHE_TTL_S": "300"}
    llm = [f"http://{HOST}:{free_port()}/v1"]
    with GatewayProcess(database_url, llm, workers=workers, env=env) as app:
        async with httpx.AsyncClient(base_url=app.root_url, headers=headers, timeout=10) as client:
            for _ in range(4 * workers):  # every worker has it cached
                assert (await client.get("/v1/conversations")).status_code == 200
            revoked = switchboard_cli(database_url, "keys", "revoke", key["id"])
            assert revoked.returncode == 0, revoked.stderr
            assert "refuses it from its next request" in revoked.stderr
            for _ in range(4 * workers):
                response = await client.get("/v1/conversations")
                assert response.status_code == 401, response.text
    if database_url.startswith("sqlite:///"):
        marker = database_url.removeprefix("sqlite:///") + ".revocations"
        assert stat.S_IMODE(os.stat(marker).st_mode) == 0o600
