"""Exports into an S3 bucket: a real S3 API (moto's server, a subprocess on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.exports.destinations import INCOMPLETE, FsspecDestination
from functions.core.exports.schemas import ExportRequest, Format
from functions.core.exports.service import Tuning, export_history
from functions.core.exports.writers import JsonlWriter
from tests.core.exports.conftest import T0, add_message, read_rows, seed_history, writers_ended
from tests.support.process import HOST, ServiceProcess, free_port

NOW = T0 + timedelta(days=1)
BUCKET = "switchboard-exports"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ServiceProcess("moto.server", ("-H", HOST, "-p", str(port)), port=port)
    server.health_path = "/moto-api/"
    with server:
        yield server.root_url


@pytest.fixture
def storage(s3_endpoint: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "eu-west-1"},
        # A fresh filesystem each time: fsspec caches instances (and their listings).
        "skip_instance_cache": True,
    }
    bucket = FsspecDestination(f"s3://{BUCKET}", options)
    if not bucket.fs.exists(BUCKET):
        bucket.fs.mkdir(BUCKET)
    return options


async def export(url: str, fmt: Format, storage: dict[str, Any], **kwargs: Any) -> Any:
    await writers_ended()
    return await export_history(
        ExportRequest(destination=url, format=fmt),
        storage_options=storage,
        tuning=Tuning(scan_rows=4, batch_rows=3),
        **kwargs,
    )


def download(bucket: FsspecDestination, tmp_path: Path) -> list[Path]:
    files = []
    for name in bucket.list():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bucket.fs.cat_file(f"{bucket.root}/{name}"))
        files.append(target)
    return files


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_an_export_into_a_bucket_reads_back_and_continues(
    shared_db: Engine[Any], tmp_path: Path, storage: dict[str, Any], fmt: Format
):
    history = await seed_history()
    url = f"s3://{BUCKET}/history/{fmt}/{tmp_path.name}/"
    first = await export(url, fmt, storage, now=NOW)
    # Rows carry their conversation as it was when they were exported.
    expected = history.expected()
    conversation = next(iter(history.conversations))
    later = NOW + timedelta(hours=1)
    await add_message(history, conversation, content="버킷 🪣", created_at=later,
                      completed_at=later)  # fmt: skip
    second = await export(url, fmt, storage, now=later + timedelta(hours=1))

    bucket = FsspecDestination(url, storage)
    names = bucket.list()
    assert not any(name.startswith(INCOMPLETE) for name in names)
    assert sorted(names) == sorted(
        [first.manifest_path, second.manifest_path]
        + [f.path for f in first.manifest.files + second.manifest.files]
    )
    local = download(bucket, tmp_path / "downloaded")
    data = sorted(p for p in local if not p.name.endswith(".json"))
    rows = [row for path in data for row in read_rows(path, "duckdb")]
    assert rows == [*expected, history.expected()[-1]]
    manifest = json.loads(next(p for p in local if p.name == second.manifest_path).read_text())
    assert manifest["destination"] == url.rstrip("/")
    assert manifest["messages"] == 1


async def test_a_failed_export_leaves_nothing_in_the_bucket(
    shared_db: Engine[Any], tmp_path: Path, storage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    await seed_history()
    url = f"s3://{BUCKET}/failed/{tmp_path.name}"

    def failing(self: JsonlWriter, chunk: Any) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(JsonlWriter, "write", failing)
    with pytest.raises(OSError, match="connection reset"):
        await export(url, "jsonl", storage, now=NOW)
    assert FsspecDestination(url, storage).list() == []
