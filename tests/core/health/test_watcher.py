"""One checker's verdict steers every process: two LLM clients (two processes' stand-ins),
each with its own watcher, and verdicts recorded from a third place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from piccolo.engine.base import Engine

from functions.core.db.engine import use_engine
from functions.core.db.notifications import PostgresListener
from functions.core.health import service
from functions.core.health.watcher import HealthWatcher
from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMUnavailableError
from functions.core.llm.schemas import ChatMessage, ChatRequest
from functions.core.settings import Settings
from tests.conftest import truncate_all
from tests.core.health.support import probed
from tests.support.simulator import async_running_simulator, free_port
from tests.support.timing import scaled

A = "http://10.0.0.1:8000/v1"
B = "http://10.0.0.2:8000/v1"


def state(client: LLMClient, url: str) -> str:
    return next(u.state for u in client.stats().upstreams if u.url == url)


async def wait_until(predicate: Callable[[], bool], within: float) -> None:
    # Polls are 3600 s apart where NOTIFY is under test: any wait well under that proves it.
    within = scaled(within * 5)
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the condition did not come true within {within}s")
        await asyncio.sleep(0.01)


class Process:
    """What a serving process holds for this: its client, listener and watcher."""

    def __init__(self, pg_url: str | None, **watcher: Any) -> None:
        self.client = LLMClient.from_settings(Settings(llm_urls=(A, B)))
        self.watcher = HealthWatcher(self.client, probe_on_start=False, **watcher)
        self.listener = PostgresListener(pg_url) if pg_url else None
        if self.listener is not None:
            self.listener.subscribe(self.watcher.subscription())

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.client.aclose()


@asynccontextmanager
async def processes(
    engine: Engine[Any], count: int, pg_url: str | None = None, **watcher: Any
) -> AsyncIterator[list[Process]]:
    use_engine(engine)
    started = [Process(pg_url, **watcher) for _ in range(count)]
    for process in started:
        process.start()
    try:
        for process in started:
            if process.listener is not None:
                await asyncio.wait_for(process.listener.listening.wait(), 5)
        yield started
    finally:
        for process in started:
            await process.stop()
        await truncate_all(engine)


async def kill_listeners(pg_url: str) -> None:
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
        )
    finally:
        await admin.close()


async def test_a_verdict_reaches_every_process_within_a_second(
    pg_url: str, pg_engine: Engine[Any]
) -> None:
    # Polling off: only notifications (and listening again) can bring news.
    async with processes(pg_engine, 2, pg_url, poll_s=3600) as both:
        clients = [p.client for p in both]
        await service.record([probed(A, healthy=False), probed(B)])
        await wait_until(lambda: all(state(c, A) == "down" for c in clients), within=1)
        assert all(state(c, B) == "up" for c in clients)

        await service.record([probed(A), probed(B)])
        await wait_until(lambda: all(state(c, A) == "up" for c in clients), within=1)

        # A verdict older than the staleness bound steers nothing; B's fresh one shows the
        # watchers have read past it.
        old = datetime.now(UTC) - timedelta(minutes=4)
        await service.record([probed(A, healthy=False)], checked_at=old)
        await service.record([probed(B, healthy=False)])
        await wait_until(lambda: all(state(c, B) == "down" for c in clients), within=1)
        assert all(state(c, A) == "up" for c in clients)


async def test_a_verdict_missed_while_deaf_is_read_on_listening_again(
    pg_url: str, pg_engine: Engine[Any]
) -> None:
    async with processes(pg_engine, 2, pg_url, poll_s=3600) as both:
        clients = [p.client for p in both]
        listeners = [p.listener for p in both if p.listener is not None]
        await kill_listeners(pg_url)
        await wait_until(lambda: not any(ln.listening.is_set() for ln in listeners), 5)
        await service.record([probed(A, healthy=False)])  # nobody hears this
        await asyncio.sleep(0.2)
        assert all(state(c, A) == "up" for c in clients)

        for listener in listeners:
            await asyncio.wait_for(listener.listening.wait(), 10)
        await wait_until(lambda: all(state(c, A) == "down" for c in clients), within=1)


async def test_a_down_verdict_lets_go_once_it_is_stale(pg_url: str, pg_engine: Engine[Any]) -> None:
    """A checker that dies cannot keep an upstream out: no new message is needed."""
    async with processes(pg_engine, 1, pg_url, poll_s=3600, stale_after_s=1.0) as (one,):
        await service.record([probed(A, healthy=False)])
        await wait_until(lambda: state(one.client, A) == "down", within=1)
        await wait_until(lambda: state(one.client, A) == "up", within=2)


async def test_on_sqlite_a_periodic_read_applies_verdicts(sqlite_engine: Engine[Any]) -> None:
    async with processes(sqlite_engine, 2, poll_s=0.1) as both:
        clients = [p.client for p in both]
        await service.record([probed(B, healthy=False)])
        await wait_until(lambda: all(state(c, B) == "down" for c in clients), within=1)
        assert all(state(c, A) == "up" for c in clients)

        await service.record([probed(B)])
        await wait_until(lambda: all(state(c, B) == "up" for c in clients), within=1)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_an_ok_verdict_leaves_passive_ejection_alone(
    backend: str, pg_url: str, pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> None:
    engine = pg_engine if backend == "postgres" else sqlite_engine
    use_engine(engine)
    async with async_running_simulator("--model", "sim-model") as sim:
        settings = Settings(
            llm_urls=(sim.base_url, f"http://127.0.0.1:{free_port()}/v1"),
            llm_eject_after_failures=1,
            llm_eject_cooldown_s=60,
            llm_max_retries=0,
        )
        client = LLMClient.from_settings(settings)
        other = client.stats().upstreams[1].url
        watcher = HealthWatcher(client, poll_s=0.05, probe_on_start=False)
        watcher.start()
        try:
            await client.list_models()
            await asyncio.to_thread(sim.stop)
            with pytest.raises(LLMUnavailableError):
                await client.chat(
                    ChatRequest(
                        model="sim-model", messages=[ChatMessage(role="user", content="hi")]
                    )
                )
            assert state(client, sim.base_url) == "ejected"

            await service.record([probed(sim.base_url), probed(other, healthy=False)])
            await wait_until(lambda: state(client, other) == "down", within=1)
            assert state(client, sim.base_url) == "ejected"
        finally:
            await watcher.stop()
            await client.aclose()
            await truncate_all(engine)
