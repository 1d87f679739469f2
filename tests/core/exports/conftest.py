"""A seeded history (Korean, emoji, every kind of turn) and readers for every format.

Rows are inserted with fixed SQL, so each test knows exactly what every stored field holds
and when each message finished; the change each write was stamped with (``change_seq``) is
read back after it. :func:`expected_row` is what an export must hold for a
message, built from those values alone; :func:`read_rows` reads an exported file back with
one reader (the json, csv or pyarrow module, or DuckDB) and normalises its values by the
documented column kinds, so every reader is held to the same rows.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from functions.core.db.engine import current_engine
from functions.core.db.sql import fetch
from functions.core.exports.schemas import COLUMNS, SCHEMA_VERSION, Kind

KIND = {column.name: column.kind for column in COLUMNS}
# Before every seeded time: a watermark of "nothing exported yet" is None, and this is a
# point in the past every seeded message finished after.
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

TRICKY = 'He said "안녕, 세상", then left;\nnew line\ttab \\ backslash 😀🇰🇷 =SUM(A1)'


@dataclass
class History:
    owner: uuid.UUID
    other_owner: uuid.UUID
    config: uuid.UUID
    conversations: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    # message id -> its stored values
    messages: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)

    def expected(self, ids: list[uuid.UUID] | None = None) -> list[dict[str, Any]]:
        """The rows for ``ids`` (default: every finished message), in export order."""
        chosen = [
            m
            for m in self.messages.values()
            if (ids is None and m["completed_at"] is not None) or (ids and m["id"] in ids)
        ]
        chosen.sort(key=lambda m: (m["change_seq"], str(m["id"])))
        return [expected_row(self, m) for m in chosen]


async def add_key(name: str = "owner") -> uuid.UUID:
    key = uuid.uuid4()
    await fetch(
        "INSERT INTO api_key (id, name, prefix, key_hash, scopes, created_at) "
        "VALUES ({}, {}, {}, {}, {}, {})",
        key,
        name,
        f"sb-{key.hex[:8]}",
        key.hex + key.hex,
        ["chat"],
        T0,
    )
    return key


async def add_config(name: str = "기본-설정", version: int = 1) -> uuid.UUID:
    config = uuid.uuid4()
    await fetch(
        "INSERT INTO llm_config (id, name, version, model, extra, is_default, created_at) "
        "VALUES ({}, {}, {}, {}, {}, {}, {})",
        config,
        name,
        version,
        "sim-model",
        "{}",
        False,
        T0,
    )
    return config


async def add_conversation(
    history: History,
    *,
    owner: uuid.UUID | None = None,
    config_name: str | None = "기본-설정",
    title: str = "한국어 대화 💬",
    metadata: dict[str, Any] | None = None,
    at: datetime = T0,
) -> uuid.UUID:
    conversation = uuid.uuid4()
    values = {
        "id": conversation,
        "owner_key": owner or history.owner,
        "config_name": config_name,
        "title": title,
        "metadata": {"팀": "연구소", "tags": ["中文", "😀"]} if metadata is None else metadata,
        "last_seq": 0,
        "created_at": at,
        "updated_at": at,
    }
    await fetch(
        "INSERT INTO conversation (id, owner_key, config_name, title, metadata, last_seq, "
        "created_at, updated_at) VALUES ({}, {}, {}, {}, {}, {}, {}, {})",
        values["id"],
        values["owner_key"],
        values["config_name"],
        values["title"],
        msgspec.json.encode(values["metadata"]).decode(),
        values["last_seq"],
        values["created_at"],
        values["updated_at"],
    )
    history.conversations[conversation] = values
    return conversation


_MESSAGE_COLUMNS = (
    "id", "conversation", "seq", "role", "content", "content_parts", "tool_calls",
    "tool_call_id", "name", "status", "llm_config", "model", "prompt_tokens",
    "completion_tokens", "latency_ms", "ttft_ms", "finish_reason", "error_code",
    "error_message", "upstream_request_id", "owner_instance", "created_at", "completed_at",
)  # fmt: skip


async def add_message(
    history: History,
    conversation: uuid.UUID,
    *,
    role: str = "user",
    content: str = "안녕하세요 😀",
    created_at: datetime,
    completed_at: datetime | None,
    status: str | None = None,
    **fields: Any,
) -> uuid.UUID:
    """Store one message (the next seq of its conversation); ``fields`` set any column."""
    convo = history.conversations[conversation]
    convo["last_seq"] += 1
    convo["updated_at"] = max(convo["updated_at"], created_at)
    values: dict[str, Any] = dict.fromkeys(_MESSAGE_COLUMNS)
    values.update(
        id=uuid.uuid4(),
        conversation=conversation,
        seq=convo["last_seq"],
        role=role,
        content=content,
        status=status or ("pending" if completed_at is None else "complete"),
        created_at=created_at,
        completed_at=completed_at,
        **fields,
    )
    if role == "assistant" and "llm_config" not in fields:
        values.update(
            llm_config=history.config,
            model="sim-model",
            prompt_tokens=12,
            completion_tokens=7,
            latency_ms=812.5,
            ttft_ms=95.25,
            finish_reason="stop",
            upstream_request_id="chatcmpl-🆔-1",
            owner_instance=uuid.uuid4(),
        )
        values.update(fields)
    args = [
        msgspec.json.encode(values[name]).decode()
        if name in ("content_parts", "tool_calls") and values[name] is not None
        else values[name]
        for name in _MESSAGE_COLUMNS
    ]
    await fetch(
        f"INSERT INTO message ({', '.join(_MESSAGE_COLUMNS)}) "
        f"VALUES ({', '.join(['{}'] * len(_MESSAGE_COLUMNS))})",
        *args,
    )
    await fetch(
        "UPDATE conversation SET last_seq = {}, updated_at = {} WHERE id = {}",
        convo["last_seq"],
        convo["updated_at"],
        conversation,
    )
    values["change_seq"] = await change_seq(values["id"])
    history.messages[values["id"]] = values
    return values["id"]  # type: ignore[no-any-return]


async def finish(history: History, message: uuid.UUID, *, at: datetime, content: str) -> None:
    """A pending reply completes (as ``finish_exchange`` would write it)."""
    await fetch(
        "UPDATE message SET status = 'complete', content = {}, completed_at = {}, "
        "finish_reason = 'stop' WHERE id = {}",
        content,
        at,
        message,
    )
    history.messages[message].update(
        status="complete",
        content=content,
        completed_at=at,
        finish_reason="stop",
        change_seq=await change_seq(message),
    )


async def change_seq(message: uuid.UUID) -> int:
    """The change the message's last write was stamped with."""
    rows = await fetch("SELECT change_seq FROM message WHERE id = {}", message)
    return int(rows[0]["change_seq"])


# However loaded the machine, a test's transactions end within this.
WRITERS_END_S = 120.0


async def writers_ended() -> None:
    """Wait until every transaction that had begun writing on the PostgreSQL cluster has
    ended (SQLite: nothing to wait for).

    An export takes every change committed before the oldest write still in progress
    began; the test database shares its cluster with other test sessions, whose open
    transactions would otherwise hold an export back (never lose a row).
    """
    if current_engine().engine_type != "postgres":
        return
    rows = await fetch("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax")
    begun = int(rows[0]["xmax"])
    deadline = time.monotonic() + WRITERS_END_S
    while True:
        rows = await fetch("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin")
        if int(rows[0]["xmin"]) >= begun:
            return
        assert time.monotonic() < deadline, "a transaction on the cluster stayed open"
        await asyncio.sleep(0.05)


async def seed_history(*, at: datetime = T0) -> History:
    """Two owners, three conversations, every kind of turn, one reply still pending."""
    history = History(
        owner=await add_key(), other_owner=await add_key("other"), config=uuid.uuid4()
    )
    history.config = await add_config()
    first = await add_conversation(history, at=at)
    minute = timedelta(minutes=1)
    await add_message(history, first, role="system", content="", created_at=at, completed_at=at)
    await add_message(
        history,
        first,
        content=TRICKY,
        created_at=at + minute,
        completed_at=at + minute,
        content_parts=[
            {"type": "text", "text": "이 그림은 뭐예요? 🖼️"},
            {"type": "image_url", "image_url": {"url": "https://example.com/차트.png"}},
        ],
    )
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "날씨", "arguments": '{"도시": "서울 ☀️"}'},
    }
    await add_message(
        history,
        first,
        role="assistant",
        content="",
        created_at=at + 2 * minute,
        completed_at=at + 2 * minute + timedelta(microseconds=812_500),
        tool_calls=[call],
        finish_reason="tool_calls",
    )
    await add_message(
        history,
        first,
        role="tool",
        content='{"기온": 21, "하늘": "맑음 ☀️"}',
        created_at=at + 3 * minute,
        completed_at=at + 3 * minute,
        tool_call_id="call_1",
        name="날씨",
    )
    await add_message(
        history,
        first,
        role="assistant",
        content="서울은 맑고 21도예요 😎",
        created_at=at + 4 * minute,
        completed_at=at + 5 * minute,
    )
    second = await add_conversation(
        history, owner=history.other_owner, config_name=None, title="", metadata={}, at=at
    )
    await add_message(history, second, content="Hello 👋", created_at=at, completed_at=at)
    await add_message(
        history,
        second,
        role="assistant",
        content="partial 답변",
        status="failed",
        created_at=at + minute,
        completed_at=at + 2 * minute,
        error_code="llm_timeout",
        error_message="the model did not answer in time ⏱",
        finish_reason=None,
    )
    third = await add_conversation(history, title="대기 중", at=at)
    await add_message(history, third, content="아직이요?", created_at=at, completed_at=at)
    await add_message(
        history, third, role="assistant", content="", created_at=at + minute, completed_at=None
    )
    return history


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def expected_row(history: History, message: dict[str, Any]) -> dict[str, Any]:
    convo = history.conversations[message["conversation"]]
    config = message["llm_config"]
    return {
        "schema_version": SCHEMA_VERSION,
        "message_id": str(message["id"]),
        "conversation_id": str(message["conversation"]),
        "seq": message["seq"],
        "role": message["role"],
        "content": message["content"],
        "content_parts": message["content_parts"],
        "tool_calls": message["tool_calls"],
        "tool_call_id": message["tool_call_id"],
        "name": message["name"],
        "status": message["status"],
        "config_id": _text(config),
        "config_name": "기본-설정" if config is not None else None,
        "config_version": 1 if config is not None else None,
        "model": message["model"],
        "prompt_tokens": message["prompt_tokens"],
        "completion_tokens": message["completion_tokens"],
        "latency_ms": message["latency_ms"],
        "ttft_ms": message["ttft_ms"],
        "finish_reason": message["finish_reason"],
        "error_code": message["error_code"],
        "error_message": message["error_message"],
        "upstream_request_id": message["upstream_request_id"],
        "owner_instance": _text(message["owner_instance"]),
        "created_at": message["created_at"],
        "completed_at": message["completed_at"],
        "change_seq": message["change_seq"],
        "owner_key_id": str(convo["owner_key"]),
        "conversation_title": convo["title"],
        "conversation_metadata": convo["metadata"],
        "conversation_config_name": convo["config_name"],
        "conversation_last_seq": convo["last_seq"],
        "conversation_created_at": convo["created_at"],
        "conversation_updated_at": convo["updated_at"],
    }


def normalize(name: str, value: Any, *, csv_module: bool = False) -> Any:
    """A read-back value as the test's Python value, by the column's documented kind."""
    kind = KIND[name]
    if csv_module and value == "":
        # Python 3.11's csv module reads a null (empty, unquoted) and "" alike.
        return None
    if value is None:
        return None
    if kind is Kind.TIMESTAMP:
        if isinstance(value, str):
            assert value.endswith("Z"), value
            value = datetime.fromisoformat(value)
        assert value.tzinfo is not None
        return value.astimezone(UTC)
    if kind is Kind.JSON:
        return json.loads(value) if isinstance(value, str) else value
    if kind in (Kind.INT32, Kind.INT64):
        return int(value)
    if kind is Kind.FLOAT64:
        return float(value)
    return str(value)


def normalized(rows: list[dict[str, Any]], *, csv_module: bool = False) -> list[dict[str, Any]]:
    names = [column.name for column in COLUMNS]
    out = []
    for row in rows:
        assert list(row) == names, list(row)
        out.append({name: normalize(name, row[name], csv_module=csv_module) for name in names})
    return out


def expected_for_csv_module(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if v == "" else v) for k, v in row.items()} for row in rows]


def read_rows(path: Path, reader: str) -> list[dict[str, Any]]:
    """Every row of one exported file, read by ``reader``, values normalised."""
    suffix = path.suffix
    if reader == "json":
        assert suffix == ".jsonl"
        lines = path.read_bytes().decode("utf-8").splitlines()
        return normalized([json.loads(line) for line in lines])
    if reader == "csv":
        assert suffix == ".csv"
        with path.open(encoding="utf-8-sig", newline="") as file:
            return normalized(list(csv.DictReader(file)), csv_module=True)
    if reader == "pyarrow":
        return normalized(_pyarrow_rows(path))
    if reader == "duckdb":
        return normalized(_duckdb_rows(path))
    raise ValueError(reader)


def _pyarrow_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    if path.suffix == ".csv":
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={c.name: pa.string() for c in COLUMNS},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        return table.to_pylist()  # type: ignore[no-any-return]
    raise ValueError(f"pyarrow reads Parquet and CSV exports here, not {path.name}")


DUCKDB_TYPES = {
    Kind.TEXT: "VARCHAR",
    Kind.JSON: "JSON",
    Kind.INT32: "INTEGER",
    Kind.INT64: "BIGINT",
    Kind.FLOAT64: "DOUBLE",
    Kind.TIMESTAMP: "TIMESTAMPTZ",
}


def _duckdb_rows(path: Path) -> list[dict[str, Any]]:
    import duckdb

    connection = duckdb.connect()
    try:
        connection.execute("SET TimeZone = 'UTC'")
        if path.suffix == ".parquet":
            relation = connection.sql(f"SELECT * FROM read_parquet('{path}')")
        elif path.suffix == ".csv":
            relation = connection.sql(
                f"SELECT * FROM read_csv('{path}', header = true, allow_quoted_nulls = false)"
            )
        else:
            columns = {c.name: DUCKDB_TYPES[c.kind] for c in COLUMNS}
            relation = connection.sql(
                f"SELECT * FROM read_json('{path}', format = 'newline_delimited', "
                f"columns = {columns!r})"
            )
        names = [column[0] for column in relation.description]
        return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]
    finally:
        connection.close()


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.endswith(".json"))


def manifests(root: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text())
        for p in sorted(root.iterdir())
        if p.name.endswith(".manifest.json")
    ]


def rows_of(root: Path, reader: str) -> list[dict[str, Any]]:
    """Every row of every published data file in ``root``, in file order."""
    return [row for path in data_files(root) for row in read_rows(path, reader)]
