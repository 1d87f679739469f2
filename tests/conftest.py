"""Shared fixtures: real databases, migrated once per run.

``db`` runs a test against PostgreSQL and again against SQLite, inside a transaction that
is rolled back afterwards (Piccolo's current transaction is a ContextVar, so the services
under test join it). Tests that need several connections use ``pg_engine`` /
``sqlite_engine`` directly and clean up with :func:`truncate_all`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.migrate import migrate
from functions.core.db.tables import ALL_TABLES, ConfigEpoch
from tests.support import process
from tests.support.databases import (
    create_postgres_database,
    drop_postgres_database,
    sqlite_url,
)

# Tests must never read a developer's .env or SWITCHBOARD_* variables by accident; the
# suite's own SWITCHBOARD_TEST_* (the database to use, how far to stretch waits) stay.
for _name in [name for name in os.environ if name.startswith("SWITCHBOARD_")]:
    if not _name.startswith("SWITCHBOARD_TEST_"):
        del os.environ[_name]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pytest_configure(config: pytest.Config) -> None:
    # A cancelled run kills what it started before it ends.
    if threading.current_thread() is threading.main_thread():
        process.kill_registered_on_sigterm()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """Fail the session when a process a test started outlives the tests (after every
    fixture's teardown); kill it and name it. Under pytest-xdist each worker checks its
    own; the message reaches the controller as the worker's reason to stop."""
    yield
    config = session.config
    if config.pluginmanager.hasplugin("dsession"):
        return  # xdist's controller: its descendants are the workers themselves
    leftovers = [process.describe(child) for child in process.leftovers()]
    if not leftovers:
        return
    process.kill_registered()
    message = "processes outlived the tests that started them (killed now): " + "; ".join(leftovers)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["shouldfail"] = message
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True)


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    url = await create_postgres_database()
    yield url
    await drop_postgres_database(url)


@pytest.fixture(scope="session")
async def pg_engine(pg_url: str) -> AsyncIterator[Engine[Any]]:
    engine = engine_from_url(pg_url)
    await migrate(engine)
    assert isinstance(engine, PostgresEngine)
    await engine.start_connection_pool(min_size=1, max_size=10)
    yield engine
    await engine.close_connection_pool()


@pytest.fixture(scope="session")
def sqlite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqlite")


@pytest.fixture(scope="session")
async def sqlite_engine(sqlite_dir: Path) -> Engine[Any]:
    engine = engine_from_url(sqlite_url(sqlite_dir))
    await migrate(engine)
    return engine


async def truncate_all(engine: Engine[Any]) -> None:
    """Empty every Switchboard table (children first, for SQLite's foreign keys).

    The configuration epoch only ever grows, as in production: a running gateway's cached
    view of configurations must see that everything changed.
    """
    for table in reversed(ALL_TABLES):
        if table is ConfigEpoch:
            await engine.run_ddl(
                "INSERT INTO config_epoch (id, epoch) VALUES (1, 1) "
                "ON CONFLICT (id) DO UPDATE SET epoch = config_epoch.epoch + 1"
            )
        else:
            await engine.run_ddl(f"DELETE FROM {table._meta.tablename}")
    # Outside the Piccolo app; emptied after the ledger, whose trigger keeps it.
    await engine.run_ddl("DELETE FROM usage_rollup")


@pytest.fixture(params=["postgres", "sqlite"])
async def db(
    request: pytest.FixtureRequest, pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> AsyncIterator[Engine[Any]]:
    """The engine under test, inside a transaction rolled back when the test ends."""
    engine = pg_engine if request.param == "postgres" else sqlite_engine
    use_engine(engine)
    async with engine.transaction() as transaction:
        yield engine
        await transaction.rollback()


@pytest.fixture(params=["postgres", "sqlite"])
async def shared_db(
    request: pytest.FixtureRequest, pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> AsyncIterator[Engine[Any]]:
    """The engine under test without a wrapping transaction (for several connections)."""
    engine = pg_engine if request.param == "postgres" else sqlite_engine
    use_engine(engine)
    yield engine
    await truncate_all(engine)
