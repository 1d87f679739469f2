from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.engine import engine_from_url, using
from functions.core.db.migrate import migrate, migration_status, rollback, schema_drift
from functions.core.db.tables import ALL_TABLES
from tests.support.databases import (
    create_postgres_database,
    drop_postgres_database,
    sqlite_url,
)

TABLE_NAMES = {table._meta.tablename for table in ALL_TABLES}


@pytest.fixture(params=["postgres", "sqlite"])
async def fresh_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Engine[Any]]:
    """An empty database of its own: migrations must build everything from nothing."""
    if request.param == "postgres":
        url = await create_postgres_database("switchboard_migrations")
        engine = engine_from_url(url)
    else:
        url = sqlite_url(tmp_path, "fresh.sqlite")
        engine = engine_from_url(url)
    with using(engine):
        yield engine
    if request.param == "postgres":
        await drop_postgres_database(url)


async def existing_tables(engine: Engine[Any]) -> set[str]:
    if engine.engine_type == "sqlite":
        rows = await engine.run_ddl("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await engine.run_ddl(
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"
        )
    return {row["name"] for row in rows} & TABLE_NAMES


async def existing_indexes(engine: Engine[Any]) -> set[str]:
    if engine.engine_type == "sqlite":
        rows = await engine.run_ddl("SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = await engine.run_ddl(
            "SELECT indexname AS name FROM pg_indexes WHERE schemaname = 'public'"
        )
    return {row["name"] for row in rows}


async def test_tables_match_the_migrations(fresh_engine: Engine[Any]) -> None:
    await migrate(fresh_engine)
    assert await schema_drift(fresh_engine) == []


async def test_forwards_backwards_forwards(fresh_engine: Engine[Any]) -> None:
    first = await migrate(fresh_engine)
    assert first.applied == list((await migration_status(fresh_engine)).keys())
    assert await existing_tables(fresh_engine) == TABLE_NAMES
    assert {"message_conversation_seq_key", "conversation_owner_recency_idx"} <= (
        await existing_indexes(fresh_engine)
    )

    again = await migrate(fresh_engine)
    assert again.applied == []

    undone = await rollback(fresh_engine)
    assert sorted(undone) == sorted(first.applied)
    assert await existing_tables(fresh_engine) == set()
    assert not any((await migration_status(fresh_engine)).values())

    redone = await migrate(fresh_engine)
    assert redone.applied == first.applied
    assert await existing_tables(fresh_engine) == TABLE_NAMES
