"""Fault fixtures: a private PostgreSQL cluster, simulators, and gateways as real processes.

The cluster is this directory's own (``tests.support.cluster``), so a test can restart or
stop it without breaking anyone else's connections. Two simulators: ``slow-model`` answers
one token every ``ITL_S`` (a send picks its reply's length with ``max_tokens``), and
``hang-model`` accepts every request and never answers. Every gateway a test starts through
:class:`Faults` is stopped by its pid when the test ends, and the tables are emptied.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.migrate import migrate
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from tests.support.cluster import PostgresCluster
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

SLOW_MODEL = "slow-model"
HANG_MODEL = "hang-model"
ITL_S = 0.1
SIMULATORS = {
    SLOW_MODEL: ("--ttft-ms", "50", "--itl-ms", str(int(ITL_S * 1000)), "--tokens", "400"),
    HANG_MODEL: ("--hang-rate", "1"),
}
LEASE_TTL_S = 2.0
FIRST_TOKEN_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 30.0
GATEWAY_ENV = {
    "SWITCHBOARD_LEASE_TTL_S": str(LEASE_TTL_S),
    "SWITCHBOARD_LLM_FIRST_TOKEN_TIMEOUT_S": str(FIRST_TOKEN_TIMEOUT_S),
    "SWITCHBOARD_LLM_TOKEN_TIMEOUT_S": "2",
    "SWITCHBOARD_LLM_TOTAL_TIMEOUT_S": str(TOTAL_TIMEOUT_S),
    "SWITCHBOARD_SEND_LOCK_TIMEOUT_S": "10",
    "SWITCHBOARD_SHUTDOWN_GRACE_S": "2",
    "SWITCHBOARD_OUTCOME_RETRY_S": "8",
    "SWITCHBOARD_AUTH_CACHE_TTL_S": "300",
}
DATABASE = "switchboard_faults"


@pytest.fixture(scope="session")
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as started:
        yield started


@pytest.fixture(scope="session")
async def faults_url(cluster: PostgresCluster) -> str:
    admin = await asyncpg.connect(cluster.url())
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    url = cluster.url(DATABASE)
    engine = engine_from_url(url)
    use_engine(engine)
    await migrate(engine)
    return url


@pytest.fixture(scope="session")
def fault_simulators() -> Iterator[dict[str, SimulatorProcess]]:
    started: dict[str, SimulatorProcess] = {}
    try:
        for model, flags in SIMULATORS.items():
            started[model] = SimulatorProcess("--model", model, *flags).start()
        yield started
    finally:
        for sim in started.values():
            sim.close()


@dataclass
class Stream:
    """What one streamed send's client saw: status, SSE events, and how the body ended."""

    status: int = 0
    accepted_after_s: float | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    body: dict[str, Any] | None = None  # the JSON error when it was not a stream
    broken: str | None = None  # the transport error if the body was cut
    first_delta: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    @property
    def last(self) -> tuple[str, dict[str, Any]]:
        return self.events[-1]

    @property
    def ended_cleanly(self) -> bool:
        return self.broken is None and bool(self.events) and self.last[0] in {"done", "error"}


@dataclass
class Faults:
    """One test's world: the database, the simulators, keys, and the gateways it starts."""

    url: str
    cluster: PostgresCluster
    sims: dict[str, SimulatorProcess]
    admin_secret: str
    alice_secret: str
    owner: uuid.UUID
    gateways: list[GatewayProcess] = field(default_factory=list)
    # The gateways' outcome journals (one directory per test, shared by its gateways, as
    # by the processes of one deployment): never the working directory's default.
    journal_dir: Path | None = None

    def gateway(self, *, workers: int = 1, **env: str) -> GatewayProcess:
        """A started ``switchboard serve`` on this database (stopped when the test ends)."""
        process = GatewayProcess(
            self.url,
            [sim.base_url for sim in self.sims.values()],
            workers=workers,
            env={
                **GATEWAY_ENV,
                **(
                    {"SWITCHBOARD_OUTCOME_JOURNAL_DIR": str(self.journal_dir)}
                    if self.journal_dir
                    else {}
                ),
                **{f"SWITCHBOARD_{k.upper()}": v for k, v in env.items()},
            },
        )
        self.gateways.append(process)
        return process.start()  # type: ignore[return-value]

    def client(
        self, gateway: GatewayProcess, *, admin: bool = False, timeout: float = 30
    ) -> httpx.AsyncClient:
        secret = self.admin_secret if admin else self.alice_secret
        return httpx.AsyncClient(
            base_url=gateway.root_url,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=100),
        )

    async def configure(self, gateway: GatewayProcess) -> None:
        """One configuration per simulator; ``slow-model``'s is the default."""
        async with self.client(gateway, admin=True) as admin:
            for model in self.sims:
                response = await admin.post(
                    "/v1/configs",
                    json={"name": model, "model": model, "is_default": model == SLOW_MODEL},
                )
                assert response.status_code == 201, response.text

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def messages(self, conversation_id: str) -> list[asyncpg.Record]:
        return await self.query(
            "SELECT id, seq, role, content, status, error_code FROM message "
            "WHERE conversation = $1 ORDER BY seq",
            uuid.UUID(conversation_id),
        )

    async def pending(self) -> list[asyncpg.Record]:
        return await self.query("SELECT id, conversation FROM message WHERE status = 'pending'")

    async def assert_paired(self, conversation_id: str, sent: list[str]) -> list[asyncpg.Record]:
        """Each message sent is stored once, in order, each followed by one reply."""
        rows = await self.messages(conversation_id)
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
        assert [row["role"] for row in rows] == ["user", "assistant"] * len(sent)
        assert [row["content"] for row in rows[::2]] == sent
        assert all(row["status"] == "complete" for row in rows[::2])
        assert all(row["status"] != "pending" for row in rows[1::2]), rows
        return rows


async def stream_send(
    client: httpx.AsyncClient,
    conversation_id: str,
    content: str,
    *,
    seen: Stream | None = None,
    idempotency_key: str | None = None,
    **fields: Any,
) -> Stream:
    """POST a streamed send and read it to its end, recording everything the client sees
    (into ``seen`` if given, so a test can watch it while it runs)."""
    seen = seen or Stream()
    started = time.monotonic()
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    try:
        async with client.stream(
            "POST",
            f"/v1/conversations/{conversation_id}/messages",
            json={"content": content, "stream": True, **fields},
            headers=headers,
        ) as response:
            seen.status = response.status_code
            seen.accepted_after_s = time.monotonic() - started
            if response.headers.get("content-type", "").startswith("application/json"):
                seen.body = json.loads(await response.aread())
                return seen
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    seen.events.append((name, json.loads(line.removeprefix("data: "))))
                    if name == "delta":
                        seen.first_delta.set()
    except httpx.TransportError as exc:
        seen.broken = type(exc).__name__
    return seen


async def json_send(
    client: httpx.AsyncClient,
    conversation_id: str,
    content: str,
    *,
    idempotency_key: str | None = None,
    **fields: Any,
) -> httpx.Response:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return await client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"content": content, **fields},
        headers=headers,
    )


async def new_conversation(client: httpx.AsyncClient, config: str | None = None) -> str:
    response = await client.post("/v1/conversations", json={"config": config} if config else {})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def sends_in_flight(
    faults: Faults, client: httpx.AsyncClient, conversations: list[str], *, max_tokens: int
) -> tuple[list[asyncio.Task[httpx.Response]], list[Stream], list[asyncio.Task[Stream]]]:
    """A non-streamed send (``json i``) to each conversation of the first half and a streamed
    one (``sse i``) to each of the second, on the slow model; returns once every reply is
    being generated (the simulator counts them all in flight)."""
    per_kind = len(conversations) // 2
    sim = faults.sims[SLOW_MODEL]
    before = (await sim.stats_async())["chat_in_flight"]
    sent = [
        asyncio.create_task(json_send(client, conv, f"json {i}", max_tokens=max_tokens))
        for i, conv in enumerate(conversations[:per_kind])
    ]
    seen = [Stream() for _ in range(per_kind)]
    streamed = [
        asyncio.create_task(
            stream_send(client, conv, f"sse {i}", seen=seen[i], max_tokens=max_tokens)
        )
        for i, conv in enumerate(conversations[per_kind:])
    ]
    await asyncio.wait_for(asyncio.gather(*(s.first_delta.wait() for s in seen)), 60)
    await sim.wait_for_async(lambda stats: stats["chat_in_flight"] >= before + 2 * per_kind)
    return sent, seen, streamed


async def wait_until(predicate: Any, *, within: float, interval: float = 0.05) -> float:
    """Await ``predicate()`` until it is true; return how long that took (``within``: on a
    quiet machine, stretched by :func:`scaled` on this one)."""
    within = scaled(within)
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


@pytest.fixture
async def faults(
    cluster: PostgresCluster,
    faults_url: str,
    fault_simulators: dict[str, SimulatorProcess],
    tmp_path: Path,
) -> AsyncIterator[Faults]:
    engine = engine_from_url(faults_url)
    use_engine(engine)
    admin = await keys.create_key(ApiKeyCreate(name="admin", scopes=["admin", "chat"]))
    alice = await keys.create_key(ApiKeyCreate(name="alice", scopes=["chat"]))
    world = Faults(
        url=faults_url,
        cluster=cluster,
        sims=fault_simulators,
        admin_secret=admin.secret,
        alice_secret=alice.secret,
        owner=alice.id,
        journal_dir=tmp_path / "outcomes",
    )
    try:
        yield world
    finally:
        for gateway in world.gateways:
            gateway.kill()
            gateway.close()
        if cluster.pid is None:  # a test stopped it and failed before starting it again
            cluster.start()
        conn = await asyncpg.connect(faults_url)
        try:
            await conn.execute(
                # CASCADE: tables added later that reference these are emptied with them.
                "TRUNCATE idempotency_key, process_lease, health_check, message, conversation, "
                "llm_config, api_key CASCADE"
            )
            await conn.execute(
                "INSERT INTO config_epoch (id, epoch) VALUES (1, 1) "
                "ON CONFLICT (id) DO UPDATE SET epoch = config_epoch.epoch + 1"
            )
        finally:
            await conn.close()
