"""End-to-end fixtures: simulators and a gateway as real processes on real sockets.

One gateway per database backend (PostgreSQL and SQLite) routes by model to five
simulators, each with one behaviour, so a test picks a fault by picking a config's model:
``sim-model`` answers, ``slow-model`` streams slowly, ``fail-model`` answers 500,
``hang-model`` never answers, ``cut-model`` breaks its stream after three tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import close_pool, engine_from_url, open_pool, use_engine
from functions.core.db.migrate import migrate
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from tests.conftest import truncate_all
from tests.support.databases import create_postgres_database, drop_postgres_database, sqlite_url
from tests.support.gateway import GatewayProcess
from tests.support.inprocess import InProcessGateway, inprocess_gateway, inprocess_settings
from tests.support.simulator import SimulatorProcess, running_simulator

SIMULATORS = {
    "sim-model": ("--max-model-len", "1024", "--tokens", "12"),
    "slow-model": ("--itl-ms", "30", "--tokens", "60"),
    "fail-model": ("--fail-rate", "1"),
    "hang-model": ("--hang-rate", "1"),
    "cut-model": ("--cut-after", "3", "--tokens", "12"),
}
GATEWAY_ENV = {
    "SWITCHBOARD_LLM_FIRST_TOKEN_TIMEOUT_S": "1",
    "SWITCHBOARD_LLM_TOKEN_TIMEOUT_S": "1",
    "SWITCHBOARD_LLM_TOTAL_TIMEOUT_S": "4",
    "SWITCHBOARD_SEND_LOCK_TIMEOUT_S": "10",
}


@pytest.fixture(scope="session")
def simulators() -> Iterator[dict[str, SimulatorProcess]]:
    started: dict[str, SimulatorProcess] = {}
    try:
        for model, flags in SIMULATORS.items():
            started[model] = SimulatorProcess("--model", model, *flags).start()
        yield started
    finally:
        for sim in started.values():
            sim.close()


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
async def backend_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "postgres":
        url = await create_postgres_database("switchboard_e2e")
    else:
        url = sqlite_url(tmp_path_factory.mktemp("e2e"), "e2e.sqlite")
    engine = engine_from_url(url)
    use_engine(engine)
    await migrate(engine)
    yield url
    if request.param == "postgres":
        await drop_postgres_database(url)


@pytest.fixture(scope="session")
def gateway(backend_url: str, simulators: dict[str, SimulatorProcess]) -> Iterator[GatewayProcess]:
    # PostgreSQL: a long cache, so only NOTIFY can make revocations take effect in time.
    cache_ttl = "300" if backend_url.startswith("postgresql") else "1"
    process = GatewayProcess(
        backend_url,
        [sim.base_url for sim in simulators.values()],
        env={**GATEWAY_ENV, "SWITCHBOARD_AUTH_CACHE_TTL_S": cache_ttl},
    )
    with process:
        yield process


@pytest.fixture(scope="session")
async def backend_engine(backend_url: str) -> AsyncIterator[Engine[Any]]:
    engine = engine_from_url(backend_url)
    await open_pool(engine, min_size=1, max_size=4)
    yield engine
    await close_pool(engine)


@dataclass
class Api:
    """HTTP clients for one test: an admin key, two chat keys, and no key at all."""

    base_url: str
    admin: httpx.AsyncClient
    alice: httpx.AsyncClient
    bob: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    engine: Engine[Any]

    async def create_config(
        self, name: str, model: str = "sim-model", **fields: Any
    ) -> dict[str, Any]:
        response = await self.admin.post(
            "/v1/configs", json={"name": name, "model": model, **fields}
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def conversation(
        self, client: httpx.AsyncClient | None = None, **fields: Any
    ) -> dict[str, Any]:
        response = await (client or self.alice).post("/v1/conversations", json=fields)
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture
async def api(gateway: GatewayProcess, backend_engine: Engine[Any]) -> AsyncIterator[Api]:
    use_engine(backend_engine)
    secrets = {
        name: (await keys.create_key(ApiKeyCreate(name=name, scopes=scopes))).secret
        for name, scopes in (("admin", ["admin", "chat"]), ("alice", ["chat"]), ("bob", ["chat"]))
    }
    timeout = httpx.Timeout(15.0)

    def client(secret: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.AsyncClient(base_url=gateway.root_url, headers=headers, timeout=timeout)

    clients = {name: client(secret) for name, secret in secrets.items()}
    anonymous = client(None)
    try:
        yield Api(gateway.root_url, anonymous=anonymous, engine=backend_engine, **clients)
    finally:
        for c in (*clients.values(), anonymous):
            await c.aclose()
        use_engine(backend_engine)
        await truncate_all(backend_engine)


@pytest.fixture
def tmp_sqlite(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


# In-process gateway (ASGI on the test's loop) for breadth: one simulator, both engines.
INPROCESS_MODEL = "inprocess-model"


@pytest.fixture(scope="session")
def inprocess_upstream() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", INPROCESS_MODEL, "--tokens", "6") as process:
        yield process


@pytest.fixture
def inprocess_overrides() -> dict[str, Any]:
    """Settings a test module changes for its in-process gateway (override the fixture)."""
    return {}


@pytest.fixture
async def inprocess(
    shared_db: Engine[Any],
    pg_url: str,
    sqlite_dir: Path,
    inprocess_upstream: SimulatorProcess,
    inprocess_overrides: dict[str, Any],
) -> AsyncIterator[InProcessGateway]:
    """The gateway on the database under test, in this process (emptied by ``shared_db``)."""
    url = pg_url if isinstance(shared_db, PostgresEngine) else sqlite_url(sqlite_dir)
    settings = inprocess_settings(url, [inprocess_upstream.base_url], **inprocess_overrides)
    async with inprocess_gateway(settings) as gateway:
        yield gateway
