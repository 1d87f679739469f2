"""Exports while messages are written on other connections, transactions committing out of
the order they began in: every message lands in exactly one published file."""

from __future__ import annotations

import asyncio
import collections
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.engine import use_engine
from functions.core.exports.schemas import ExportRequest
from functions.core.exports.service import export_history
from tests.conftest import truncate_all
from tests.core.exports.conftest import (
    add_conversation,
    add_message,
    rows_of,
    seed_history,
    writers_ended,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WRITERS = 4
EXPORTS = 6


@pytest.fixture
async def pg(pg_engine: Engine[Any]) -> AsyncIterator[Engine[Any]]:
    """PostgreSQL without a wrapping transaction (writers in transactions of their own,
    several at once: SQLite takes one writer at a time); emptied afterwards."""
    use_engine(pg_engine)
    yield pg_engine
    await truncate_all(pg_engine)


async def test_exports_amid_concurrent_writes_take_each_message_once(
    pg: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    conversations = [await add_conversation(history) for _ in range(WRITERS)]
    stop = asyncio.Event()
    rng = random.Random(17)

    async def writer(conversation: Any) -> int:
        written = 0
        while not stop.is_set():
            # The transaction's id is taken at its first write; it commits a while later,
            # after others that began after it.
            async with pg.transaction():
                now = datetime.now(UTC)
                await add_message(history, conversation, created_at=now, completed_at=now)
                await asyncio.sleep(rng.uniform(0, 0.05))
            written += 1
        return written

    tasks = [asyncio.create_task(writer(c)) for c in conversations]
    exported = []
    try:
        for _ in range(EXPORTS):
            result = await export_history(ExportRequest(destination=str(tmp_path)))
            exported.append(result.manifest.messages)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        written = await asyncio.gather(*tasks)
    await writers_ended()
    last = await export_history(ExportRequest(destination=str(tmp_path)))
    exported.append(last.manifest.messages)

    ids = [row["message_id"] for row in rows_of(tmp_path, "json")]
    assert min(written) > 0
    assert sum(exported[:-1]) > 0  # exports ran while writes were in flight, and took some
    assert len(ids) == sum(exported) == len(history.expected()) == 8 + sum(written)
    assert collections.Counter(ids).most_common(1)[0][1] == 1
    assert set(ids) == {row["message_id"] for row in history.expected()}
