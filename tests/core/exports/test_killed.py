"""A killed export (SIGKILL mid-write, a real process) leaves nothing; the next catches up."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.exports import watermarks
from functions.core.exports.destinations import INCOMPLETE, LocalDestination
from functions.core.exports.schemas import ExportRequest, Format
from functions.core.exports.service import export_history, series_for
from tests.core.exports.conftest import (
    T0,
    add_conversation,
    add_message,
    data_files,
    manifests,
    rows_of,
    seed_history,
    writers_ended,
)
from tests.support.process import REPO_ROOT, kill_group, start_async
from tests.support.timing import scaled

MESSAGES = 200


def database_url(engine: Engine[Any]) -> str:
    if isinstance(engine, PostgresEngine):
        return str(engine.config["dsn"])
    return f"sqlite:///{engine.path}"  # type: ignore[attr-defined]


def partial_files(root: Path) -> list[Path]:
    incomplete = root / INCOMPLETE
    return list(incomplete.rglob("*.partial")) if incomplete.exists() else []


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_a_killed_export_leaves_nothing_and_the_next_run_catches_up(
    shared_db: Engine[Any], tmp_path: Path, fmt: Format
):
    history = await seed_history()
    conversation = await add_conversation(history)
    for i in range(MESSAGES):
        at = T0 + timedelta(seconds=i)
        await add_message(history, conversation, content=f"메시지 {i} 📨", created_at=at,
                          completed_at=at)  # fmt: skip
    out = tmp_path / "out"
    await writers_ended()
    process = await start_async(
        sys.executable, "-m", "tests.core.exports.export_process",
        database_url(shared_db), str(out), fmt,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    written = []
    try:
        async with asyncio.timeout(scaled(60)):
            while len(written) < 3:  # three chunks of ten written, dozens to go
                line = (await process.stdout.readline()).decode()
                assert line, f"the export ended early: {written}"
                if line.startswith("chunk "):
                    written.append(line)
    finally:
        kill_group(process.pid)
        await process.communicate()

    # Nothing a reader could pick up; the watermark has not moved.
    assert data_files(out) == []
    assert manifests(out) == []
    assert partial_files(out)  # the dead run's temporary file, out of readers' way
    series = series_for(ExportRequest(destination=str(out), format=fmt), LocalDestination(out))
    stuck = await watermarks.get_watermark(series)
    assert stuck is not None
    assert stuck.exported_seq is None
    assert stuck.run_id is not None  # the dead run's claim

    # Its process is gone from this host: the next run takes over at once, removes what
    # the dead run left and exports everything, once.
    result = await export_history(
        ExportRequest(destination=str(out), format=fmt), now=datetime.now(UTC)
    )
    assert result.manifest.messages == len(history.expected()) == MESSAGES + 8
    assert [row["message_id"] for row in rows_of(out, "duckdb")] == [
        row["message_id"] for row in history.expected()
    ]
    assert not (out / INCOMPLETE).exists()
    done = await watermarks.get_watermark(series)
    assert done is not None
    assert done.run_id is None
    assert done.exported_seq == result.manifest.watermark.through
