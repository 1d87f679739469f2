"""Exports on PostgreSQL and SQLite: formats read back alike, incremental runs, atomicity.

Exports read committed history: the tests write without a wrapping transaction
(``shared_db``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.sql import fetch
from functions.core.exports import service, watermarks
from functions.core.exports.destinations import LocalDestination
from functions.core.exports.schemas import SCHEMA_VERSION, ExportRequest, Format, Selection
from functions.core.exports.service import Tuning, export_history, series_for
from functions.core.exports.source import ExportInTransactionError
from functions.core.exports.watermarks import ExportRunningError
from functions.core.exports.writers import UTF8_BOM, JsonlWriter
from functions.core.liveness.service import sweep_interrupted
from functions.core.messages.schemas import ReplyOutcome
from functions.core.messages.service import finish_exchange
from functions.core.replay.sources import read_export_rows
from tests.core.exports.conftest import (
    T0,
    add_conversation,
    add_message,
    data_files,
    expected_for_csv_module,
    finish,
    manifests,
    read_rows,
    rows_of,
    seed_history,
    writers_ended,
)

READERS: dict[Format, tuple[str, ...]] = {
    "jsonl": ("json", "duckdb"),
    "csv": ("csv", "pyarrow", "duckdb"),
    "parquet": ("pyarrow", "duckdb"),
}
NOW = T0 + timedelta(days=1)
# Small batches, so even the seeded history spans several chunks and scans.
SMALL = Tuning(scan_rows=4, batch_rows=3, batch_bytes=1 << 20)


async def run(
    out: Path, fmt: Format = "jsonl", *, now: datetime = NOW, **options: Any
) -> service.ExportResult:
    selection = options.pop("selection", Selection())
    full = options.pop("full", False)
    await writers_ended()
    return await export_history(
        ExportRequest(destination=str(out), format=fmt, full=full, selection=selection),
        now=now,
        tuning=options.pop("tuning", SMALL),
        **options,
    )


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["message_id"] for row in rows]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
async def test_every_reader_reads_the_same_rows(
    shared_db: Engine[Any], tmp_path: Path, fmt: Format
):
    history = await seed_history()
    result = await run(tmp_path, fmt)

    expected = history.expected()
    assert result.manifest.messages == len(expected) == 8  # the pending reply waits
    (path,) = data_files(tmp_path)
    for reader in READERS[fmt]:
        rows = read_rows(path, reader)
        if reader == "csv":
            assert rows == expected_for_csv_module(expected), reader
        else:
            assert rows == expected, reader
    raw = path.read_bytes()
    assert fmt == "parquet" or ("안녕, 세상".encode() in raw and "😀🇰🇷".encode() in raw)
    if fmt == "csv":
        assert raw.startswith(UTF8_BOM + b'"schema_version","message_id",')


async def test_csv_keeps_null_and_empty_apart(shared_db: Engine[Any], tmp_path: Path):
    await seed_history()
    await run(tmp_path, "csv")
    (path,) = data_files(tmp_path)
    lines = path.read_bytes().decode("utf-8-sig").splitlines()
    (system,) = [line for line in lines if '"system"' in line]
    # The system turn: empty content (quoted), no content parts (null: nothing at all).
    assert ',"system","",,' in system


async def test_manifest_describes_the_files(shared_db: Engine[Any], tmp_path: Path):
    await seed_history()
    result = await run(tmp_path, "parquet")

    (manifest,) = manifests(tmp_path)
    (path,) = data_files(tmp_path)
    assert manifest["schema_version"] == SCHEMA_VERSION == 2
    assert manifest["mode"] == "incremental"
    assert manifest["messages"] == 8
    assert manifest["watermark"] == {"after": None, "through": result.manifest.watermark.through}
    # Every change exported is below the watermark.
    assert (
        max(row["change_seq"] for row in read_rows(path, "pyarrow"))
        < manifest["watermark"]["through"]
    )
    assert manifest["files"] == [
        {
            "path": path.name,
            "rows": 8,
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    ]
    assert [c["name"] for c in manifest["columns"]][:3] == [
        "schema_version",
        "message_id",
        "conversation_id",
    ]
    assert result.manifest_path == f"{path.stem}.manifest.json"
    published = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240
    assert published == sorted([path.name, result.manifest_path])


async def test_incremental_runs_export_only_new_messages(shared_db: Engine[Any], tmp_path: Path):
    history = await seed_history()
    first = await run(tmp_path)
    conversation = next(iter(history.conversations))
    later = NOW + timedelta(hours=1)
    new = [
        await add_message(history, conversation, content=f"새 메시지 {i} 🆕", created_at=later,
                          completed_at=later + timedelta(seconds=i))
        for i in range(5)
    ]  # fmt: skip

    second = await run(tmp_path, now=later + timedelta(hours=1))
    third = await run(tmp_path, now=later + timedelta(hours=2))

    assert (first.manifest.messages, second.manifest.messages, third.manifest.messages) == (8, 5, 0)
    assert second.manifest.watermark.after == first.manifest.watermark.through
    rows = rows_of(tmp_path, "json")
    assert ids(rows) == ids(history.expected())
    assert ids(rows)[-5:] == [str(message) for message in new]
    assert third.manifest.files == []  # nothing new: a manifest, no data file


async def test_a_reply_pending_during_a_run_is_exported_by_the_next(
    shared_db: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    pending = next(m["id"] for m in history.messages.values() if m["status"] == "pending")
    await run(tmp_path)
    # It finishes long after it was created (its created_at is behind the watermark).
    await finish(history, pending, at=NOW + timedelta(minutes=30), content="늦은 답변 🐢")

    second = await run(tmp_path, now=NOW + timedelta(hours=1))

    assert second.manifest.messages == 1
    rows = rows_of(tmp_path, "json")
    assert rows[-1]["message_id"] == str(pending)
    assert rows[-1]["content"] == "늦은 답변 🐢"
    assert sorted(ids(rows)) == sorted(str(m) for m in history.messages)  # each exactly once


async def test_rows_written_are_reported_as_the_export_goes(shared_db: Engine[Any], tmp_path: Path):
    await seed_history()
    reported: list[int] = []
    result = await run(tmp_path, on_rows=reported.append)
    assert len(reported) > 1  # small chunks: several reports
    assert reported == sorted(set(reported))
    assert reported[-1] == result.manifest.messages == 8


async def test_a_message_finished_a_second_before_an_export_is_in_it(
    shared_db: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    conversation = next(iter(history.conversations))
    just_now = datetime.now(UTC)
    recent = await add_message(history, conversation, created_at=just_now, completed_at=just_now)
    await asyncio.sleep(1)
    first = await run(tmp_path, now=datetime.now(UTC))
    second = await run(tmp_path, now=datetime.now(UTC))

    assert first.manifest.messages == 9
    assert ids(rows_of(tmp_path, "json"))[-1] == str(recent)
    assert ids(rows_of(tmp_path, "json")) == ids(history.expected())
    assert second.manifest.messages == 0  # right after: nothing new
    assert second.manifest.watermark.after == first.manifest.watermark.through


async def test_a_reply_retired_then_finished_is_exported_again_as_a_new_version(
    shared_db: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    conversation = next(iter(history.conversations))
    owner = uuid.uuid4()  # a process whose lease lapsed while the database was out of reach
    reply = await add_message(
        history, conversation, role="assistant", content="", created_at=T0, completed_at=None,
        owner_instance=owner,
    )  # fmt: skip
    retired = await sweep_interrupted(bound=timedelta(minutes=1))
    assert reply in {r.message_id for r in retired}  # and the seeded pending reply
    first = await run(tmp_path)
    # The process lived and has the answer: it finishes the reply the sweep retired.
    outcome = ReplyOutcome(status="complete", content="살아 있었어요 ✅", finish_reason="stop")
    await finish_exchange(reply, outcome, owner_instance=owner)
    second = await run(tmp_path, now=NOW + timedelta(hours=1))

    assert (first.manifest.messages, second.manifest.messages) == (10, 1)
    versions = [row for row in rows_of(tmp_path, "json") if row["message_id"] == str(reply)]
    assert [(v["status"], v["error_code"], v["content"]) for v in versions] == [
        ("failed", "interrupted", ""),
        ("complete", None, "살아 있었어요 ✅"),
    ]
    assert versions[0]["change_seq"] < versions[1]["change_seq"]
    for fmt in ("csv", "parquet"):  # every format carries the version
        await run(tmp_path / fmt, fmt)
        rows = rows_of(tmp_path / fmt, "duckdb")
        assert [r["change_seq"] for r in rows if r["message_id"] == str(reply)] == [
            versions[1]["change_seq"]
        ]
    # The README's query: the latest version of each message.
    latest = duckdb_latest(tmp_path / "*.jsonl")
    assert len(latest) == len(history.messages)
    assert latest[str(reply)] == ("complete", "살아 있었어요 ✅")
    # Replay too, whatever order the files come in, a version 1 file (no change_seq) among
    # them: the newer version is in the first file here, the older in a version 1 file.
    older, newer = data_files(tmp_path)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_bytes(newer.read_bytes())
    as_version_1 = [
        json.dumps({k: v for k, v in {**row, "schema_version": 1}.items() if k != "change_seq"})
        for row in map(json.loads, older.read_text().splitlines())
    ]
    (mixed / "b.jsonl").write_text("\n".join(as_version_1) + "\n")
    read = {row.message_id: row for row in read_export_rows(mixed)}
    assert len(read) == len(history.messages)
    assert (read[reply].status, read[reply].content) == ("complete", "살아 있었어요 ✅")


async def stamped_before_the_upgrade(engine: Engine[Any]) -> None:
    """Every message as the migration left the rows stored before it: stamped 0."""
    if engine.engine_type != "postgres":  # the trigger leaves an explicit stamp alone
        await fetch("UPDATE message SET change_seq = 0")
        return
    await engine.run_ddl("ALTER TABLE message DISABLE TRIGGER message_change_seq")
    try:
        await fetch("UPDATE message SET change_seq = 0")
    finally:
        await engine.run_ddl("ALTER TABLE message ENABLE TRIGGER message_change_seq")


def duckdb_latest(pattern: Path) -> dict[str, tuple[str, str]]:
    import duckdb

    connection = duckdb.connect()
    try:
        rows = connection.sql(
            f"SELECT message_id, status, content FROM read_json('{pattern}', "
            "format = 'newline_delimited') QUALIFY row_number() OVER "
            "(PARTITION BY message_id ORDER BY change_seq DESC) = 1"
        ).fetchall()
    finally:
        connection.close()
    return {str(row[0]): (row[1], row[2]) for row in rows}


async def test_an_export_inside_a_transaction_that_wrote_is_refused(
    db: Engine[Any], tmp_path: Path
):
    await seed_history()
    request = ExportRequest(destination=str(tmp_path))
    if db.engine_type == "postgres":
        with pytest.raises(ExportInTransactionError, match="outside a transaction"):
            await export_history(request)
        assert data_files(tmp_path) == []
    else:  # one writer at a time: the transaction's own writes are all there is
        assert (await export_history(request)).manifest.messages == 8


async def test_a_series_exported_by_time_continues_by_change_order(
    shared_db: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    # Rows stored before the upgrade are stamped 0, and the series' watermark was a time:
    # the messages finished at or before it were exported.
    await stamped_before_the_upgrade(shared_db)
    series = series_for(ExportRequest(destination=str(tmp_path)), LocalDestination(tmp_path))
    claim = await watermarks.claim(series, uuid.uuid4(), ttl=timedelta(minutes=1), now=NOW)
    await watermarks.release(claim, now=NOW)
    old_watermark = T0 + timedelta(minutes=1)
    await fetch(
        "UPDATE export_watermark SET exported_through = {} WHERE series = {}",
        old_watermark,
        series.key,
    )
    conversation = next(iter(history.conversations))
    new = await add_message(history, conversation, created_at=NOW, completed_at=NOW)

    first = await run(tmp_path)
    second = await run(tmp_path, now=NOW + timedelta(hours=1))

    exported = {row["message_id"] for row in rows_of(tmp_path, "json")}
    assert exported == {
        str(m["id"])
        for m in history.messages.values()
        if m["completed_at"] is not None and (m["id"] == new or m["completed_at"] > old_watermark)
    }
    assert first.manifest.messages == len(exported) == 5
    assert second.manifest.messages == 0


async def test_messages_finished_at_the_same_instant_are_all_exported_once(
    shared_db: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    conversation = next(iter(history.conversations))
    instant = NOW - timedelta(hours=1)
    for i in range(7):  # more than a chunk, all with one completed_at
        await add_message(history, conversation, content=str(i), created_at=instant,
                          completed_at=instant)  # fmt: skip
    await run(tmp_path, now=instant + timedelta(minutes=5))  # the watermark is that instant
    await run(tmp_path, now=NOW + timedelta(hours=1))
    assert ids(rows_of(tmp_path, "json")) == ids(history.expected())


async def test_filters_select_by_owner_config_and_time(shared_db: Engine[Any], tmp_path: Path):
    history = await seed_history()
    other_config = await add_conversation(history, config_name="다른 설정")
    await add_message(history, other_config, created_at=T0, completed_at=T0)
    by_owner = await run(tmp_path / "owner", selection=Selection(owner=history.other_owner))
    await run(tmp_path / "config", selection=Selection(config="다른 설정"))
    window = Selection(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=4))
    by_time = await run(tmp_path / "time", selection=window)

    def expected(keep: Any) -> list[str]:
        return [
            row["message_id"]
            for row in history.expected()
            if keep(history.messages[uuid.UUID(row["message_id"])])
        ]

    assert by_owner.manifest.messages == 2
    assert ids(rows_of(tmp_path / "owner", "json")) == expected(
        lambda m: history.conversations[m["conversation"]]["owner_key"] == history.other_owner
    )
    assert ids(rows_of(tmp_path / "config", "json")) == expected(
        lambda m: m["conversation"] == other_config
    )
    assert ids(rows_of(tmp_path / "time", "json")) == expected(
        lambda m: window.since <= m["created_at"] < window.until  # type: ignore[operator]
    )
    assert by_time.manifest.selection == window


async def test_each_selection_and_format_is_its_own_series(shared_db: Engine[Any], tmp_path: Path):
    history = await seed_history()
    await run(tmp_path, selection=Selection(owner=history.other_owner))
    everything = await run(tmp_path)  # same folder, no filter: its own watermark
    as_csv = await run(tmp_path, "csv")
    assert (everything.manifest.messages, as_csv.manifest.messages) == (8, 8)


async def test_full_exports_everything_again_and_moves_the_watermark(
    shared_db: Engine[Any], tmp_path: Path
):
    history = await seed_history()
    await run(tmp_path)
    conversation = next(iter(history.conversations))
    later = NOW + timedelta(hours=1)
    await add_message(history, conversation, created_at=later, completed_at=later)

    full = await run(tmp_path, full=True, now=later + timedelta(hours=1))
    after = await run(tmp_path, now=later + timedelta(hours=2))

    assert full.manifest.mode == "full"
    assert full.manifest.watermark.after is None
    assert full.manifest.messages == 9
    assert after.manifest.messages == 0


async def test_a_failed_export_leaves_nothing_and_does_not_move_the_watermark(
    shared_db: Engine[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    history = await seed_history()
    calls = 0
    write = JsonlWriter.write

    def failing(self: JsonlWriter, chunk: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        write(self, chunk)

    monkeypatch.setattr(JsonlWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        await run(tmp_path)
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 - no data file, no manifest, no _incomplete/
    series = series_for(ExportRequest(destination=str(tmp_path)), LocalDestination(tmp_path))
    watermark = await watermarks.get_watermark(series)
    assert watermark is not None
    assert (watermark.exported_seq, watermark.run_id) == (None, None)

    monkeypatch.setattr(JsonlWriter, "write", write)
    again = await run(tmp_path)
    assert again.manifest.messages == 8
    assert ids(rows_of(tmp_path, "json")) == ids(history.expected())


async def test_a_second_run_on_a_series_is_refused_while_one_runs(
    shared_db: Engine[Any], tmp_path: Path
):
    await seed_history()
    series = series_for(ExportRequest(destination=str(tmp_path)), LocalDestination(tmp_path))
    running = await watermarks.claim(series, uuid.uuid4(), ttl=timedelta(minutes=1), now=NOW)
    with pytest.raises(ExportRunningError) as refused:
        await run(tmp_path)
    assert refused.value.details["run_id"] == str(running.run_id)
    # Once its claim has expired (a run on another host that died), the next run takes over.
    taken = await run(tmp_path, now=NOW + timedelta(minutes=2))
    assert taken.manifest.messages == 8


async def test_a_run_killed_after_its_commit_is_finished_by_the_next(
    shared_db: Engine[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    history = await seed_history()

    def crash(self: LocalDestination, temp: str, final: str) -> bool:
        raise KeyboardInterrupt  # killed between the commit and the renames

    monkeypatch.setattr(LocalDestination, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        await run(tmp_path)
    monkeypatch.undo()
    assert data_files(tmp_path) == []
    assert manifests(tmp_path) == []

    # Its claim lapses (the process lives on here, so only by time); the next run renames
    # the committed files into place, then exports what is new: nothing is lost or doubled.
    conversation = next(iter(history.conversations))
    later = NOW + timedelta(hours=1)
    await add_message(history, conversation, created_at=later, completed_at=later)
    second = await run(tmp_path, now=later + timedelta(hours=1))

    assert len(second.recovered) == 2
    assert second.manifest.messages == 1
    assert len(manifests(tmp_path)) == 2
    assert ids(rows_of(tmp_path, "json")) == ids(history.expected())
    assert not (tmp_path / "_incomplete").exists()


async def test_time_bounds_without_a_zone_are_utc(shared_db: Engine[Any], tmp_path: Path):
    await seed_history()
    naive = await run(tmp_path / "naive", selection=Selection(since=datetime(2026, 11, 1, 9, 1)))
    aware = await run(tmp_path / "aware", selection=Selection(since=T0 + timedelta(minutes=1)))
    assert naive.manifest.selection == aware.manifest.selection
    assert naive.manifest.messages == aware.manifest.messages == 5


def test_every_column_is_documented():
    from functions.core.exports.schemas import COLUMNS, column_docs

    assert [d.name for d in column_docs()] == [c.name for c in COLUMNS]
    assert all(d.doc and d.type for d in column_docs())
