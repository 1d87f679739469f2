"""The export flow under Prefect's test harness: incremental runs into a folder and a bucket,
on PostgreSQL and SQLite, and ``switchboard flows run export`` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from piccolo.engine.base import Engine
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows import progress
from flows.deployments import by_name
from flows.export_history import ARTIFACT_KEY, ExportReport, export_history
from functions.core.db.engine import use_engine
from functions.core.exports.destinations import FsspecDestination
from functions.core.settings import load_settings
from tests.conftest import truncate_all
from tests.core.exports.conftest import (
    add_message,
    data_files,
    manifests,
    read_rows,
    rows_of,
    seed_history,
    writers_ended,
)
from tests.flows.conftest import prefect_api_url, prefect_env, run_flow
from tests.support.databases import sqlite_url
from tests.support.process import HOST, REPO_ROOT, ServiceProcess, free_port, run

SWITCHBOARD = [sys.executable, "-m", "functions.cli"]


@pytest.fixture(params=["postgres", "sqlite"])
async def export_db(
    request: pytest.FixtureRequest,
    pg_url: str,
    pg_engine: Engine[Any],
    sqlite_engine: Engine[Any],
    sqlite_dir: Path,
    flow_env: Callable[..., None],
) -> AsyncIterator[Engine[Any]]:
    """The session's database of one engine, as the flow's setting; emptied afterwards."""
    engine = pg_engine if request.param == "postgres" else sqlite_engine
    flow_env(database_url=pg_url if request.param == "postgres" else sqlite_url(sqlite_dir))
    use_engine(engine)
    yield engine
    use_engine(engine)
    await truncate_all(engine)


async def test_the_flow_exports_what_is_new_each_run(export_db: Engine[Any], tmp_path: Path):
    history = await seed_history()
    out = tmp_path / "exports"

    await writers_ended()
    first = await run_flow(export_history, out=str(out), format="parquet")
    report: ExportReport = first.result
    assert report.messages == 8
    assert report.mode == "incremental"
    assert report.after is None
    # Finished just after the first run: the next run holds it, however soon it starts.
    conversation = next(iter(history.conversations))
    finished = datetime.now(UTC)
    await add_message(history, conversation, content="새 소식 📰", created_at=finished,
                      completed_at=finished)  # fmt: skip
    await writers_ended()
    second = await run_flow(export_history, out=str(out), format="parquet")

    assert second.result.messages == 1
    assert second.result.after == report.through
    assert [row["message_id"] for row in rows_of(out, "duckdb")] == [
        row["message_id"] for row in history.expected()
    ]
    assert [m["messages"] for m in manifests(out)] == [8, 1]
    # The whole folder, as a data tool reads it: one query over every published file.
    counted = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchall()
    assert counted == [(9,)]

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[second.flow_run_id])
            )
        )
    assert [a.key for a in artifacts] == [ARTIFACT_KEY]
    assert "**1** message(s)" in str(artifacts[0].data)


class Recorder:
    """A progress reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def plan(self, total: int) -> None:
        self.shown.append(f"plan {total}")

    def step(self, description: str) -> None:
        self.shown.append(f"step {description}")

    def status(self, description: str) -> None:
        self.shown.append(f"status {description}")


async def test_progress_shows_rows_and_rate(export_db: Engine[Any], tmp_path: Path):
    await seed_history()
    await writers_ended()
    recorder = Recorder()
    with progress.reporting_to(recorder):
        ran = await run_flow(export_history, out=str(tmp_path))
    statuses = [line for line in recorder.shown if line.startswith("status ")]
    assert statuses
    assert re.fullmatch(rf"status exporting to {re.escape(str(tmp_path))}: 8 rows, [\d,]+ rows/s",
                        statuses[-1])  # fmt: skip
    assert recorder.shown.index(f"step exporting to {tmp_path}") < recorder.shown.index(statuses[0])
    assert re.search(r"in [\d.]+ s \([\d,]+ rows/s\)", ran.result.summary()[0])


async def test_filters_are_parameters(export_db: Engine[Any], tmp_path: Path):
    history = await seed_history()
    await writers_ended()
    ran = await run_flow(
        export_history,
        out=str(tmp_path),
        format="csv",
        owner=str(history.other_owner),
        since="2026-11-01T09:01:00Z",
    )
    assert ran.result.messages == 1  # the other owner's failed reply, stored at 09:01
    (path,) = data_files(tmp_path)
    (row,) = read_rows(path, "csv")
    assert row["error_code"] == "llm_timeout"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ServiceProcess("moto.server", ("-H", HOST, "-p", str(port)), port=port)
    server.health_path = "/moto-api/"
    with server:
        yield server.root_url


async def test_a_scheduled_export_into_a_bucket(
    export_db: Engine[Any], tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
):
    # The AWS variables a deployment's workers would have.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    bucket = FsspecDestination("s3://flow-exports", {"skip_instance_cache": True})
    if not bucket.fs.exists("flow-exports"):
        bucket.fs.mkdir("flow-exports")
    history = await seed_history()
    await writers_ended()
    url = f"s3://flow-exports/{tmp_path.name}"

    ran = await run_flow(export_history, out=url)

    assert ran.result.messages == 8
    listed = FsspecDestination(url, {"skip_instance_cache": True}).list()
    assert sorted(listed) == sorted([ran.result.manifest, ran.result.files[0]["path"]])
    local = tmp_path / ran.result.files[0]["path"]
    local.write_bytes(bucket.fs.cat_file(f"flow-exports/{tmp_path.name}/{local.name}"))
    assert read_rows(local, "json") == history.expected()


def test_the_deployment_runs_daily_with_typed_parameters():
    scheduled = by_name("export")
    assert scheduled.interval(load_settings({}, dotenv=None)) == timedelta(days=1)
    schema = scheduled.flow.parameters.properties
    assert list(schema) == ["out", "format", "full", "since", "until", "owner", "config"]
    assert schema["format"]["enum"] == ["jsonl", "csv", "parquet"]
    assert schema["since"]["anyOf"][0] == {"format": "date-time", "type": "string"}
    assert schema["owner"]["anyOf"][0] == {"format": "uuid", "type": "string"}


async def test_flows_run_export_from_the_command_line(
    pg_url: str, pg_engine: Engine[Any], tmp_path: Path
):
    use_engine(pg_engine)
    try:
        history = await seed_history()
        await writers_ended()
        out = tmp_path / "out"
        env = prefect_env(
            tmp_path / "prefect-home",
            PREFECT_API_URL=prefect_api_url(),
            SWITCHBOARD_DATABASE_URL=pg_url,
            SWITCHBOARD_LOG_FORMAT="json",
        )
        command = [*SWITCHBOARD, "flows", "run", "export", "--format", "jsonl", "--out", str(out)]
        first = await asyncio.to_thread(
            run, [*command, "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["messages"] == 8
        second = await asyncio.to_thread(
            run, [*command, "--config", "기본-설정"], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert "exported 6 message(s) (incremental, jsonl)" in second.stdout
        rows = rows_of(out, "json")
        assert len(rows) == 14  # two series in one folder: each its own watermark
        assert {row["message_id"] for row in rows} == {
            row["message_id"] for row in history.expected()
        }
    finally:
        await truncate_all(pg_engine)


@pytest.mark.parametrize(
    "out", ["s3://AKIAEXAMPLE:hunter2@bucket/history", "s3://bucket/history?token=hunter2"]
)
def test_flows_run_export_refuses_a_destination_carrying_a_secret(
    pg_url: str, tmp_path: Path, out: str
):
    env = prefect_env(tmp_path / "prefect-home", SWITCHBOARD_DATABASE_URL=pg_url)
    started = time.monotonic()
    refused = run(
        [*SWITCHBOARD, "flows", "run", "export", "--out", out], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "invalid destination 's3://" in refused.stderr
    assert "hunter2" not in refused.stdout + refused.stderr
    # Refused before Prefect started: it has nothing to keep the URL in.
    assert not (tmp_path / "prefect-home").exists()
    assert time.monotonic() - started < 60  # about a second, on a machine that is not loaded
