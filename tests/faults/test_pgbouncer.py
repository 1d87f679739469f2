"""Behind a real PgBouncer in transaction mode: three gateways, two simulators, one
PostgreSQL database, sends under load, and one gateway killed (SIGKILL) mid-run.

Every send a client saw acknowledged (a 201 reply, a stream that ended ``done``) is stored
once, its user turn and its reply, in order; nothing is stored twice; the killed
process's pending replies are retired as ``interrupted`` within the lease's bound, and
every conversation takes a send afterwards. The gateways reach PostgreSQL only through
the pooler (``SWITCHBOARD_DATABASE_POOL_MODE=transaction``), with fewer server connections
than their pools hold, so transactions of different processes share server connections;
two of them ``LISTEN`` on a direct URL, the third has none and hears nothing (it checks
keys on every request). The database is migrated through the pooler too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import engine_from_url, using
from functions.core.db.migrate import migrate
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from tests.faults.conftest import (
    GATEWAY_ENV,
    LEASE_TTL_S,
    json_send,
    new_conversation,
    stream_send,
    wait_until,
)
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.pgbouncer import PgBouncer
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

MODEL = "pooled-model"
SIMULATOR_FLAGS = ("--model", MODEL, "--ttft-ms", "20", "--itl-ms", "25", "--tokens", "400")
# Server connections PgBouncer keeps: fewer than the gateways' pools together (3 x 8).
SERVER_CONNECTIONS = 5
CONVERSATIONS = 18  # one client each, sending one message after another
ACKED_BEFORE_KILL = 24
ACKED_AFTER_KILL = 24
MAX_TOKENS = (4, 16)  # 0.1-0.4 s per reply at the simulators' pace
STATEMENTS = 40


@dataclass
class Sent:
    """One send as its client saw it."""

    content: str
    gateway: int
    streamed: bool
    acknowledged: bool = False
    reply: str | None = None  # the reply's text the client was given
    error: str | None = None


@dataclass
class Load:
    gateways: list[GatewayProcess]
    secret: str
    alive: list[int] = field(default_factory=lambda: [0, 1, 2])
    sent: dict[str, list[Sent]] = field(default_factory=dict)
    in_flight: dict[str, Sent] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acknowledged(self) -> int:
        return sum(s.acknowledged for sends in self.sent.values() for s in sends)

    def client(self, index: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateways[index].root_url,
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=scaled(60),
        )

    async def send_one(self, conversation: str, sent: Sent) -> None:
        tokens = random.randint(*MAX_TOKENS)
        async with self.client(sent.gateway) as client:
            if sent.streamed:
                stream = await stream_send(client, conversation, sent.content, max_tokens=tokens)
                if stream.ended_cleanly and stream.last[0] == "done":
                    sent.acknowledged = True
                    sent.reply = stream.last[1]["message"]["content"]
                    deltas = "".join(d["text"] for name, d in stream.events if name == "delta")
                    assert deltas == sent.reply
                else:
                    sent.error = stream.broken or repr(stream.body or stream.events[-1:])
                return
            try:
                response = await json_send(client, conversation, sent.content, max_tokens=tokens)
            except httpx.TransportError as exc:
                sent.error = type(exc).__name__
                return
            if response.status_code == 201:
                sent.acknowledged = True
                sent.reply = response.json()["content"]
            else:
                sent.error = f"{response.status_code} {response.text}"

    async def drive(self, index: int, conversation: str) -> None:
        """Send to one conversation until told to stop, moving to a live gateway after a
        failure (as a client behind a load balancer would)."""
        self.sent[conversation] = []
        gateway = index % 3
        turn = 0
        while not self.stop.is_set():
            if gateway not in self.alive:
                gateway = self.alive[turn % len(self.alive)]
            sent = Sent(f"{conversation[:8]} turn {turn}", gateway, streamed=turn % 2 == index % 2)
            self.sent[conversation].append(sent)
            self.in_flight[conversation] = sent
            await self.send_one(conversation, sent)
            del self.in_flight[conversation]
            if not sent.acknowledged:
                gateway = (gateway + 1) % 3
            turn += 1


@pytest.fixture
async def pooled() -> AsyncIterator[tuple[str, PgBouncer]]:
    """The test's own database on the suite's server, behind a PgBouncer of its own."""
    direct = await create_postgres_database("switchboard_pgbouncer")
    bouncer = await asyncio.to_thread(
        PgBouncer(direct, pool_mode="transaction", pool_size=SERVER_CONNECTIONS).start
    )
    try:
        yield direct, bouncer
    finally:
        await asyncio.to_thread(bouncer.close)
        await drop_postgres_database(direct)


async def _query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _start(*services: Any) -> None:
    await asyncio.gather(*(asyncio.to_thread(service.start) for service in services))


async def test_three_gateways_behind_pgbouncer_lose_nothing_when_one_is_killed(
    pooled: tuple[str, PgBouncer], tmp_path: Any
) -> None:
    direct, bouncer = pooled
    engine = engine_from_url(bouncer.url, pool_mode="transaction")
    assert isinstance(engine, PostgresEngine)
    with using(engine):
        await migrate(engine)  # through the pooler: DDL in transactions, nothing kept
        admin = await keys.create_key(ApiKeyCreate(name="admin", scopes=["admin", "chat"]))
        alice = await keys.create_key(ApiKeyCreate(name="alice", scopes=["chat"]))
        carol = await keys.create_key(ApiKeyCreate(name="carol", scopes=["chat"]))
    sims = [SimulatorProcess(*SIMULATOR_FLAGS) for _ in range(2)]
    pooled_env = {
        **GATEWAY_ENV,
        "SWITCHBOARD_DATABASE_POOL_MODE": "transaction",
        "SWITCHBOARD_DATABASE_POOL_MAX": "8",
        "SWITCHBOARD_OUTCOME_JOURNAL_DIR": str(tmp_path / "outcomes"),
    }
    listening = {**pooled_env, "SWITCHBOARD_DATABASE_LISTEN_URL": direct}
    gateways = [
        GatewayProcess(bouncer.url, [sim.base_url for sim in sims], env=env)
        for env in (listening, listening, pooled_env)
    ]
    try:
        await _start(*sims)
        await _start(*gateways)
        async with httpx.AsyncClient(
            base_url=gateways[1].root_url, headers={"Authorization": f"Bearer {admin.secret}"}
        ) as client:
            created = await client.post(
                "/v1/configs", json={"name": MODEL, "model": MODEL, "is_default": True}
            )
            assert created.status_code == 201, created.text
        load = Load(gateways, alice.secret)
        async with load.client(0) as client:
            conversations = [await new_conversation(client) for _ in range(CONVERSATIONS)]
        await _run_and_kill(load, conversations, direct, bouncer)
        await _check_stored(load, direct)
        await _every_conversation_takes_a_send(load, conversations)
        await _revocation_reaches_both_kinds_of_listener(gateways, admin.secret, carol, direct)
        assert "notifications.not_listening" in gateways[2].log_text()
    finally:
        for gateway in gateways:
            gateway.kill()
            gateway.close()
        for sim in sims:
            sim.close()


async def _run_and_kill(
    load: Load, conversations: list[str], direct: str, bouncer: PgBouncer
) -> None:
    drivers = [asyncio.create_task(load.drive(i, conv)) for i, conv in enumerate(conversations)]
    try:
        await wait_until(_at_least(load, ACKED_BEFORE_KILL), within=30)
        # Transactions of the three gateways' pools share the pooler's few server
        # connections: more clients than servers, the servers within the pool's size.
        pool = await asyncio.to_thread(bouncer.pool)
        servers = sum(v for k, v in pool.items() if k.startswith("sv_"))
        assert servers <= SERVER_CONNECTIONS < pool["cl_active"] + pool["cl_waiting"], pool
        dead: list[asyncpg.Record] = []

        async def replies_pending_on_the_doomed() -> bool:
            # Replies being generated by the gateway about to die (each conversation has
            # one sender, so its pending reply is that sender's current send).
            doomed = [uuid.UUID(c) for c, s in load.in_flight.items() if s.gateway == 0]
            dead[:] = await _query(
                direct,
                "SELECT id FROM message WHERE status = 'pending' "
                "AND conversation = ANY($1::uuid[])",
                doomed,
            )
            return len(dead) >= 2

        await wait_until(replies_pending_on_the_doomed, within=20, interval=0.01)
        load.alive.remove(0)
        load.gateways[0].kill()
        killed_at = time.monotonic()

        async def dead_retired() -> bool:
            rows = await _query(
                direct,
                "SELECT count(*) AS n FROM message WHERE id = ANY($1::uuid[]) "
                "AND status = 'pending'",
                [row["id"] for row in dead],
            )
            return int(rows[0]["n"]) == 0

        # What the dead process left pending is retired by the live ones' rules (the
        # lease lapses, then a claim or a sweep) while the load goes on.
        await wait_until(dead_retired, within=3 * LEASE_TTL_S + 4)
        retired_s = time.monotonic() - killed_at
        after_kill = load.acknowledged
        await wait_until(_at_least(load, after_kill + ACKED_AFTER_KILL), within=40)
        print(
            f"\npgbouncer: {load.acknowledged} sends acknowledged; {len(dead)} replies of the "
            f"killed gateway retired {retired_s:.1f} s after the kill"
        )
        # The lease lapses within its TTL of the last renewal, then a claim or a sweep.
        assert retired_s < scaled(3 * LEASE_TTL_S + 4)
    finally:
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*drivers), scaled(90))
    assert any(not s.acknowledged for sends in load.sent.values() for s in sends)


def _at_least(load: Load, count: int) -> Any:
    async def reached() -> bool:
        return load.acknowledged >= count

    return reached


async def _check_stored(load: Load, direct: str) -> None:
    """Acknowledged: stored once, with the reply its client was given; unacknowledged:
    stored at most once, ended; every conversation a run of user/reply pairs."""

    async def nothing_pending() -> bool:
        rows = await _query(direct, "SELECT count(*) AS n FROM message WHERE status = 'pending'")
        return int(rows[0]["n"]) == 0

    await wait_until(nothing_pending, within=3 * LEASE_TTL_S)
    for conversation, sends in load.sent.items():
        rows = await _query(
            direct,
            "SELECT seq, role, content, status, error_code FROM message "
            "WHERE conversation = $1 ORDER BY seq",
            uuid.UUID(conversation),
        )
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
        assert [row["role"] for row in rows] == ["user", "assistant"] * (len(rows) // 2)
        stored = {row["content"]: rows[i + 1] for i, row in enumerate(rows) if i % 2 == 0}
        assert len(stored) == len(rows) // 2, "a user turn stored twice"
        assert set(stored) <= {s.content for s in sends}
        for sent in sends:
            if sent.acknowledged:
                reply = stored[sent.content]
                assert (reply["status"], reply["content"]) == ("complete", sent.reply), sent
            elif sent.content in stored:
                # Not seen by its client (cut by the kill, perhaps after it was recorded),
                # but ended all the same: never left pending.
                status = stored[sent.content]["status"]
                assert status in ("complete", "failed"), (sent, stored[sent.content])


async def _every_conversation_takes_a_send(load: Load, conversations: list[str]) -> None:
    async with load.client(1) as one, load.client(2) as two:
        answers = await asyncio.gather(
            *(
                json_send((one, two)[i % 2], conv, "one more", max_tokens=2)
                for i, conv in enumerate(conversations)
            )
        )
    assert [answer.status_code for answer in answers] == [201] * len(conversations)


async def _revocation_reaches_both_kinds_of_listener(
    gateways: list[GatewayProcess], admin_secret: str, carol: Any, direct: str
) -> None:
    """A NOTIFY sent through the pooler is heard on the direct LISTEN connection (the
    listening gateway drops the key it cached); the deaf one caches nothing."""
    clients = [
        httpx.AsyncClient(
            base_url=gateways[i].root_url, headers={"Authorization": f"Bearer {carol.secret}"}
        )
        for i in (1, 2)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        for client in clients:  # cached where a cache is kept (TTL 300 s)
            assert (await client.get("/v1/conversations")).status_code == 200
        async with httpx.AsyncClient(
            base_url=gateways[2].root_url, headers={"Authorization": f"Bearer {admin_secret}"}
        ) as admin:
            revoked = await admin.delete(f"/v1/keys/{carol.id}")
            assert revoked.status_code in (200, 204), revoked.text
        for client in clients:

            async def refused(client: httpx.AsyncClient = client) -> bool:
                return (await client.get("/v1/conversations")).status_code == 401

            await wait_until(refused, within=2)


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
async def test_a_statement_prepared_on_one_server_connection_is_not_used_on_another(
    pooled: tuple[str, PgBouncer], pool_mode: Literal["session", "transaction"]
) -> None:
    """What ``pool_mode="transaction"`` protects: with asyncpg's statement cache on, a
    statement prepared through the pooler lives on the server connection it was lent,
    and the next transaction may be lent another (PgBouncer reuses the last one released
    first, so the interleaving below sends it to another every time)."""
    _, bouncer = pooled
    engine = engine_from_url(bouncer.url, pool_mode=pool_mode)
    assert isinstance(engine, PostgresEngine)
    first, other = [await engine.get_new_connection() for _ in range(2)]
    try:
        assert await first.fetchval("SELECT $1::int + 1", 1) == 2
        async with other.transaction():  # holds the server connection `first` just used
            await other.fetchval("SELECT 1")
            if pool_mode == "session":
                with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                    await first.fetchval("SELECT $1::int + 1", 2)
            else:
                assert await first.fetchval("SELECT $1::int + 1", 2) == 3
    finally:
        await first.close()
        await other.close()


@pytest.mark.parametrize("asked", ["UTF8", None])
async def test_pgbouncer_lends_a_server_connection_without_setting_its_encoding(
    pooled: tuple[str, PgBouncer], asked: str | None
) -> None:
    """asyncpg asks for ``'utf-8'``, which PgBouncer takes for another encoding than the
    server's ``UTF8`` and sets (one more statement and commit) on every transaction; the
    pooled engine asks for ``UTF8``. Counted in ``pg_stat_database``, which a backend
    reports in full when it ends: PgBouncer is stopped before the count is read."""
    direct, bouncer = pooled
    engine = engine_from_url(bouncer.url, pool_mode="transaction")
    assert isinstance(engine, PostgresEngine)
    if asked is None:  # asyncpg's own startup: what the setting is there to avoid
        engine.config.pop("server_settings")
    commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    before = (await _query(direct, commits))[0]["xact_commit"]
    connection = await engine.get_new_connection()
    try:
        for i in range(STATEMENTS):
            assert await connection.fetchval("SELECT $1::int", i) == i
    finally:
        await connection.close()
    await asyncio.to_thread(bouncer.close)  # its server connections end and report

    reads = [0]

    async def counted() -> int:
        # Each read of the count is a transaction too, counted once its backend ends.
        reads[0] += 1
        total = int((await _query(direct, commits))[0]["xact_commit"]) - int(before)
        return total - (reads[0] - 1)

    async def reported() -> bool:
        return await counted() >= STATEMENTS

    await wait_until(reported, within=20, interval=0.5)
    await asyncio.sleep(0.5)  # a straggler would be the SETs themselves
    if asked is None:
        assert await counted() >= 2 * STATEMENTS
    else:
        # A few more: the reads' own, connecting; never one more per statement.
        assert await counted() < STATEMENTS * 1.5
