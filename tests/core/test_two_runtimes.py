"""Two runtimes in one process (a notebook beside a test, two test databases) do not meet.

Each runtime binds its engine and its key cache to the block it opens and to the tasks
started there, and a web app binds each request to its own runtime: one on PostgreSQL and
one on SQLite, sending through the simulator at the same time, each see only their rows;
closing one leaves the other working; a key, its cache entry and a revocation stay where
they were made.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from functions.core.chat.schemas import SendRequest
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.engine import ENGINE, current_engine, engine_from_url, use_engine, using
from functions.core.db.migrate import migrate
from functions.core.errors import AuthenticationError
from functions.core.keys import revocations
from functions.core.keys import service as keys
from functions.core.keys.cache import current_principals
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.messages.schemas import Turn
from functions.core.runtime import Runtime, open_runtime
from functions.core.settings import Settings
from tests.support.databases import create_postgres_database, drop_postgres_database, sqlite_url
from tests.support.inprocess import inprocess_gateway, inprocess_settings
from tests.support.simulator import SimulatorProcess, async_running_simulator

MODEL = "two-runtimes-model"
SENDS = 3


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[SimulatorProcess]:
    async with async_running_simulator("--tokens", "4", "--model", MODEL) as sim:
        yield sim


@pytest.fixture
async def databases(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A PostgreSQL and a SQLite database of their own, migrated, with a default
    configuration each."""
    urls = {
        "postgres": await create_postgres_database("switchboard_two_runtimes"),
        "sqlite": sqlite_url(tmp_path / "sqlite"),
    }
    (tmp_path / "sqlite").mkdir()
    try:
        for url in urls.values():
            async with open_runtime(Settings(database_url=url), use_llm=False) as rt:
                await migrate(rt.engine)
                await configs.create_config(
                    LLMConfigCreate(name="default", model=MODEL, is_default=True)
                )
        yield urls
    finally:
        await drop_postgres_database(urls["postgres"])


def settings_for(url: str, simulator: SimulatorProcess, tmp_path: Path) -> Settings:
    return Settings(
        database_url=url,
        llm_urls=(simulator.base_url,),
        auth_cache_ttl_s=300.0,
        outcome_journal_dir=str(tmp_path / "journal" / uuid.uuid4().hex),
        log_format="json",
        log_level="WARNING",
    )


async def eventually(predicate: Any, within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.02)


async def stored_counts() -> tuple[int, int]:
    """(conversations, messages) in the database this context runs on."""
    engine = current_engine()
    conversations_n = await engine.run_ddl("SELECT count(*) AS n FROM conversation")
    messages_n = await engine.run_ddl("SELECT count(*) AS n FROM message")
    return int(conversations_n[0]["n"]), int(messages_n[0]["n"])


async def test_two_runtimes_send_at_once_each_on_its_own_database(
    databases: dict[str, str], simulator: SimulatorProcess, tmp_path: Path
) -> None:
    opened = asyncio.Barrier(2)
    sent = asyncio.Barrier(2)
    sqlite_closed = asyncio.Event()
    secrets: dict[str, str] = {}

    async def run(name: str) -> dict[str, Any]:
        settings = settings_for(databases[name], simulator, tmp_path)
        async with open_runtime(settings, serving=True, configure_logs=False) as rt:
            engine_class = PostgresEngine if name == "postgres" else SQLiteEngine
            assert isinstance(current_engine(), engine_class)
            created = await keys.create_key(ApiKeyCreate(name=f"owner-{name}"))
            secrets[name] = created.secret
            cache = current_principals()
            assert cache is rt.principals
            if name == "postgres":  # PostgreSQL caches only while it hears revocations
                assert rt.notifications is not None
                await asyncio.wait_for(rt.notifications.listening.wait(), 30)
            assert cache.enabled
            principal = await keys.authenticate(created.secret)
            await opened.wait()

            # Both send at once, in tasks of their own (which inherit their runtime).
            async def converse(n: int) -> uuid.UUID:
                conversation = await conversations.create_conversation(
                    principal.key_id, ConversationCreate(title=f"{name} {n}")
                )
                reply = await rt.chat.send(
                    SendRequest(
                        access=UNRESTRICTED,
                        owner=principal.key_id,
                        conversation_id=conversation.id,
                        turns=[Turn(role="user", content=f"hello from {name} #{n}")],
                        sampling={"max_tokens": 3},
                    )
                )
                assert reply.status == "complete", reply
                return conversation.id

            ids = await asyncio.gather(*(converse(n) for n in range(SENDS)))
            await sent.wait()

            # Each sees its own rows only: its key, its conversations, its messages.
            assert [k.name for k in await keys.list_keys()] == [f"owner-{name}"]
            assert await stored_counts() == (SENDS, 2 * SENDS)
            listed = await conversations.list_conversations(principal.key_id)
            assert sorted(c.id for c in listed.data) == sorted(ids)
            # The other runtime's key is unknown here, and never in this cache.
            other = secrets["sqlite" if name == "postgres" else "postgres"]
            with pytest.raises(AuthenticationError, match="unknown API key"):
                await keys.authenticate(other)
            assert cache.get(keys.hash_secret(other), revocations.read_mark(cache.marker)) is None
            assert cache.get(keys.hash_secret(created.secret), revocations.read_mark(cache.marker))

            if name == "sqlite":
                return {"cache": cache, "key": created, "principal": principal}
            # PostgreSQL goes on after SQLite's runtime closed: same engine, same cache.
            await sqlite_closed.wait()
            assert isinstance(current_engine(), PostgresEngine)
            assert current_principals() is cache
            await converse(SENDS)
            assert await stored_counts() == (SENDS + 1, 2 * (SENDS + 1))
            # A revocation here takes this cache's entry, marks no SQLite file.
            await keys.revoke_key(created.id)
            with pytest.raises(AuthenticationError, match="revoked"):
                await keys.authenticate(created.secret)
            return {"cache": cache, "key": created, "principal": principal}

    async def sqlite_then_close() -> dict[str, Any]:
        try:
            return await run("sqlite")
        finally:
            sqlite_closed.set()

    pg, sq = await asyncio.gather(run("postgres"), sqlite_then_close())

    assert pg["cache"] is not sq["cache"]
    assert pg["cache"].marker is None
    marker = sqlite_marker(databases["sqlite"])
    assert sq["cache"].marker == marker
    # PostgreSQL's revocation left SQLite's marker untouched (none was ever written).
    assert revocations.read_mark(marker) is None
    # The SQLite key is still good in its own database: opened again, it authenticates,
    # and its revocation marks the file beside its own database.
    async with open_runtime(
        Settings(database_url=databases["sqlite"]), use_llm=False, configure_logs=False
    ):
        assert (await keys.authenticate(secrets["sqlite"])).key_id == sq["key"].id
        with pytest.raises(AuthenticationError, match="unknown API key"):
            await keys.authenticate(secrets["postgres"])
        await keys.revoke_key(sq["key"].id)
    assert revocations.read_mark(marker) is not None


async def engine_after_a_turn() -> Any:
    await asyncio.sleep(0)
    return current_engine()


def sqlite_marker(url: str) -> str:
    """Where revocations of the SQLite database at ``url`` are marked."""
    return str(Path(url.removeprefix("sqlite:///")).resolve()) + revocations.MARKER_SUFFIX


async def test_two_apps_in_one_process_each_answer_from_their_own_runtime(
    databases: dict[str, str], simulator: SimulatorProcess
) -> None:
    """Requests run in the server's tasks, not the lifespan's: each app binds its runtime
    to every request, so two apps side by side never answer from the other's database."""
    async with (
        inprocess_gateway(inprocess_settings(databases["postgres"], [simulator.base_url])) as pg,
        inprocess_gateway(inprocess_settings(databases["sqlite"], [simulator.base_url])) as sq,
    ):
        # Each admin key lives in its own database only.
        for gateway, other in ((pg, sq), (sq, pg)):
            listed = await gateway.admin.get("/v1/keys")
            assert listed.status_code == 200, listed.text
            assert [k["name"] for k in listed.json()["data"]] == ["admin"]
            foreign = other.admin.headers["Authorization"]
            refused = await gateway.admin.get("/v1/keys", headers={"Authorization": foreign})
            assert refused.status_code == 401, refused.text
        for gateway, marker in ((pg, "pg"), (sq, "sqlite")):
            made = await gateway.admin.post("/v1/conversations", json={"title": marker})
            assert made.status_code == 201, made.text
            reply = await gateway.admin.post(
                f"/v1/conversations/{made.json()['id']}/messages",
                json={"content": f"hello {marker}", "max_tokens": 3},
            )
            assert reply.status_code == 201, reply.text
        for gateway, marker in ((pg, "pg"), (sq, "sqlite")):
            listed = await gateway.admin.get("/v1/conversations")
            assert [c["title"] for c in listed.json()["data"]] == [marker]
        runtimes: list[Runtime] = [pg.app.state.runtime, sq.app.state.runtime]
        assert isinstance(runtimes[0].engine, PostgresEngine)
        assert isinstance(runtimes[1].engine, SQLiteEngine)


async def test_a_bound_engine_wins_over_the_default_and_unbinding_restores_it(
    databases: dict[str, str],
) -> None:
    pg, sq = engine_from_url(databases["postgres"]), engine_from_url(databases["sqlite"])
    before = ENGINE.default
    use_engine(pg)
    try:
        assert current_engine() is pg
        with using(sq):
            assert current_engine() is sq
            assert ENGINE.engine_type == "sqlite"
            # A task started in the block keeps its engine after the block ends.
            task = asyncio.get_running_loop().create_task(engine_after_a_turn())
        assert current_engine() is pg
        assert await task is sq
        assert current_engine() is pg
        # What copy and pickle probe for is never the engine's (nor an error without one).
        assert not hasattr(ENGINE, "__deepcopy__")
    finally:
        use_engine(before)


async def test_a_sigterm_drains_every_serving_runtime_and_closing_one_keeps_the_other(
    databases: dict[str, str], simulator: SimulatorProcess, tmp_path: Path
) -> None:
    """No registry of runtimes: each one's handler drains it, then calls the one it
    replaced, down to the handler installed here (which only notes the signal)."""
    heard: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _: heard.append(sig))
    try:
        pg_settings = settings_for(databases["postgres"], simulator, tmp_path)
        sq_settings = settings_for(databases["sqlite"], simulator, tmp_path)
        async with open_runtime(pg_settings, serving=True, configure_logs=False) as pg:
            async with open_runtime(sq_settings, serving=True, configure_logs=False) as sq:
                assert current_engine() is sq.engine
            # The inner one closed: this block is on its own runtime again, which still
            # hears the signal (the handler it installed is back in place).
            assert current_engine() is pg.engine
            signal.raise_signal(signal.SIGTERM)
            await eventually(lambda: pg.in_flight.draining)
            assert heard == [signal.SIGTERM]
            assert not sq.in_flight.draining  # closed: its handler went with it
        # Both in turn, when both are open.
        heard.clear()
        async with (
            open_runtime(pg_settings, serving=True, configure_logs=False) as pg,
            open_runtime(sq_settings, serving=True, configure_logs=False) as sq,
        ):
            signal.raise_signal(signal.SIGTERM)
            await eventually(lambda: pg.in_flight.draining and sq.in_flight.draining)
            assert heard == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_two_runtimes_live_metrics_add_up_in_one_scrape(
    databases: dict[str, str], simulator: SimulatorProcess, tmp_path: Path
) -> None:
    """Prometheus' registry is one per process: the runtimes' upstream counters of the
    same upstream are one series, the sum of both clients'."""
    from prometheus_client.parser import text_string_to_metric_families

    from functions.core.metrics import render_metrics

    async def send_one(rt: Runtime) -> None:
        owner = await keys.create_key(ApiKeyCreate(name="metrics"))
        reply = await rt.chat.send(
            SendRequest(
                access=UNRESTRICTED,
                owner=owner.id,
                turns=[Turn(role="user", content="count me")],
                sampling={"max_tokens": 2},
            )
        )
        assert reply.status == "complete"

    def scraped() -> float:
        text = render_metrics()[0].decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "switchboard_llm_upstream_requests_total"
            and sample.labels.get("upstream") == simulator.base_url
        )

    async with (
        open_runtime(settings_for(databases["postgres"], simulator, tmp_path)) as pg,
        open_runtime(settings_for(databases["sqlite"], simulator, tmp_path)) as sq,
    ):
        with using(pg.engine):
            await send_one(pg)
        await send_one(sq)
        await send_one(sq)
        counts = [
            sum(u.requests_total for u in rt.require_llm().stats().upstreams) for rt in (pg, sq)
        ]
        assert counts == [1, 2]
        assert scraped() == 3
    assert scraped() == 0  # both closed: nothing of theirs is left in the registry
