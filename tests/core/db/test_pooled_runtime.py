"""A serving runtime behind a pooler in transaction mode (``SWITCHBOARD_DATABASE_POOL_MODE``):
its engine prepares nothing for later, and it listens on the direct URL when given one,
else on nothing, so that no subscriber trusts what it cannot hear (``tests/faults/
test_pgbouncer.py`` runs both behind a real PgBouncer)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from piccolo.engine.postgres import PostgresEngine

from functions.core.db.notifications import DeafListener, PostgresListener, notify
from functions.core.liveness.inflight import CONVERSATION_DELETED
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from tests.support.timing import scaled


async def test_without_a_listen_url_nothing_is_heard_and_keys_are_not_cached(
    pg_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=pg_url, database_pool_mode="transaction", outcome_journal_dir=str(tmp_path)
    )
    async with open_runtime(settings, use_llm=False, serving=True, configure_logs=False) as rt:
        assert isinstance(rt.engine, PostgresEngine)
        assert rt.engine.config["statement_cache_size"] == 0
        assert isinstance(rt.notifications, DeafListener)
        await asyncio.sleep(0.1)
        assert not rt.notifications.listening.is_set()
        # A revocation could not be heard: every request reads the key from the database.
        assert not rt.principals.enabled


async def test_with_a_listen_url_notifications_are_heard_there(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=pg_url,
        database_pool_mode="transaction",
        database_listen_url=pg_url,
        outcome_journal_dir=str(tmp_path),
    )
    async with open_runtime(settings, use_llm=False, serving=True, configure_logs=False) as rt:
        assert isinstance(rt.notifications, PostgresListener)
        await asyncio.wait_for(rt.notifications.listening.wait(), scaled(10))
        assert rt.principals.enabled
        deleted = uuid.uuid4()
        with rt.in_flight.guard(deleted) as guard:
            await notify(CONVERSATION_DELETED, str(deleted))
            for _ in range(int(scaled(100))):
                if guard.reason is not None:
                    break
                await asyncio.sleep(0.05)
            assert guard.reason == "deleted"
