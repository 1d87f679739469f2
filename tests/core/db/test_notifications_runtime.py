"""A serving runtime listens through its engine's port, on SQLite too: a conversation
deleted by another process ends this process's send in it, and SQLite's key cache stays
on from the start (its revocation marker, read before each use, is what keeps it right)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.notifications import PollingListener
from functions.core.liveness.inflight import CONVERSATION_DELETED, Guard, Interrupted
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from tests.core.db.test_engine_parity import NOTIFY_SCRIPT
from tests.support import process
from tests.support.timing import scaled


async def test_a_sqlite_process_hears_a_deletion_made_by_another(
    sqlite_engine: Engine[Any], tmp_path: Path
) -> None:
    url = f"sqlite:///{sqlite_engine.path}"
    settings = Settings(database_url=url, outcome_journal_dir=str(tmp_path))
    async with open_runtime(settings, use_llm=False, serving=True, configure_logs=False) as rt:
        assert isinstance(rt.notifications, PollingListener)
        # The revocation marker keeps SQLite's cache right: on at once, listening or not.
        assert rt.principals.enabled
        await asyncio.wait_for(rt.notifications.listening.wait(), scaled(10))
        assert rt.principals.enabled
        deleted, other = uuid.uuid4(), uuid.uuid4()
        with rt.in_flight.guard(deleted) as doomed, rt.in_flight.guard(other) as spared:
            # As a send waits on the model: the deletion cuts the wait short.
            waiting = asyncio.create_task(wait_on_the_model(doomed))
            await asyncio.to_thread(
                process.run,
                [sys.executable, "-c", NOTIFY_SCRIPT, url, CONVERSATION_DELETED, str(deleted)],
                check=True,
                timeout=scaled(60),
            )
            with pytest.raises(Interrupted) as stopped:
                await waiting
            assert stopped.value.reason == "deleted"
            assert spared.reason is None


async def wait_on_the_model(guard: Guard) -> None:
    with guard.waiting():
        await asyncio.sleep(scaled(30))
