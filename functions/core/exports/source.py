"""Reading finished messages for an export: in chunks, in the order they finished.

Messages are read by keyset pagination over the ``message_completed_id_idx`` index
(``(m.completed_at, m.id) > (…)``), so the cost of a chunk does not depend on how deep into
the history it is, and memory stays flat whatever the history's size. Each page is read in
two steps, as history pages are (``messages.service.list_messages``): the keys and sizes of
the next messages first, then the rows themselves in chunks of at most ``batch_rows`` rows
and about ``batch_bytes`` bytes, so a run of long messages makes smaller chunks, never a
bigger one.

The database renders each row as the bytes the file holds, so no row ever becomes a Python
object: a CSV line (every non-null value quoted, null an empty field) or a JSON object
line, columns in :data:`~functions.core.exports.schemas.COLUMNS` order. PostgreSQL streams
CSV lines with ``COPY (SELECT …) TO STDOUT`` and hands a chunk's JSON lines back joined, as
one ``bytea`` value; SQLite builds each line with string and JSON functions. The column
list, the joins and the keyset are one query shape for both; only how a value becomes text
differs (:class:`_Dialect`).

Only finished messages (``completed_at`` set) are read; a pending reply joins the scan once
it finishes, at its completion time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import current_engine
from functions.core.db.sql import _numbered, fetch
from functions.core.exports.schemas import COLUMNS, SCHEMA_VERSION, Kind

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from functions.core.exports.schemas import Selection

# Before every stored time: where a scan from the beginning starts.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NIL = uuid.UUID(int=0)
# After every id: a scan after a watermark starts at (watermark, MAX_ID), i.e. strictly after
# every message finished at the watermark itself (those were exported by then).
MAX_ID = uuid.UUID(int=2**128 - 1)

DEFAULT_SCAN_ROWS = 10_000
DEFAULT_BATCH_ROWS = 5_000
DEFAULT_BATCH_BYTES = 8 * 1024 * 1024

Shape = Literal["csv", "jsonl"]

# Where each column comes from (m: message, c: its conversation, l: the reply's config).
_SOURCES: dict[str, str] = {
    "schema_version": str(SCHEMA_VERSION),
    "message_id": "m.id",
    "conversation_id": "m.conversation",
    "seq": "m.seq",
    "role": "m.role",
    "content": "m.content",
    "content_parts": "m.content_parts",
    "tool_calls": "m.tool_calls",
    "tool_call_id": "m.tool_call_id",
    "name": "m.name",
    "status": "m.status",
    "config_id": "m.llm_config",
    "config_name": "l.name",
    "config_version": "l.version",
    "model": "m.model",
    "prompt_tokens": "m.prompt_tokens",
    "completion_tokens": "m.completion_tokens",
    "latency_ms": "m.latency_ms",
    "ttft_ms": "m.ttft_ms",
    "finish_reason": "m.finish_reason",
    "error_code": "m.error_code",
    "error_message": "m.error_message",
    "upstream_request_id": "m.upstream_request_id",
    "owner_instance": "m.owner_instance",
    "created_at": "m.created_at",
    "completed_at": "m.completed_at",
    "owner_key_id": "c.owner_key",
    "conversation_title": "c.title",
    "conversation_metadata": "c.metadata",
    "conversation_config_name": "c.config_name",
    "conversation_last_seq": "c.last_seq",
    "conversation_created_at": "c.created_at",
    "conversation_updated_at": "c.updated_at",
}
assert tuple(_SOURCES) == tuple(column.name for column in COLUMNS)

_JOINS = (
    " FROM message m JOIN conversation c ON c.id = m.conversation "
    "LEFT JOIN llm_config l ON l.id = m.llm_config"
)
# PostgreSQL: each message's conversation and configuration looked up by primary key. As a
# plain join, a large conversation table makes the planner hash all of it for every chunk
# (a chunk's cost would grow with the number of conversations); LIMIT 1 keeps each lookup a
# lookup (the subquery is not merged into a join).
_PG_JOINS = (
    " FROM message m CROSS JOIN LATERAL (SELECT id, owner_key, title, metadata, config_name, "
    "last_seq, created_at, updated_at FROM conversation WHERE id = m.conversation LIMIT 1) c "
    "LEFT JOIN LATERAL (SELECT name, version FROM llm_config WHERE id = m.llm_config "
    "LIMIT 1) l ON true"
)
_WHERE = " WHERE (m.completed_at, m.id) > ({}, {}) AND (m.completed_at, m.id) <= ({}, {})"
_ORDER = " ORDER BY m.completed_at, m.id"
# What a message weighs in a chunk: its text and JSON columns, in bytes on either engine.
_SIZE_COLUMNS = ("m.content", "m.content_parts", "m.tool_calls", "m.error_message")


@dataclass(frozen=True)
class Window:
    """Messages finished after ``after`` (None: from the beginning) up to ``through``."""

    after: datetime | None
    through: datetime


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows as file bytes (one line per row for JSONL; CSV may span lines)."""

    data: bytes
    rows: int


class _Dialect:
    """How one engine turns a column into text, and a row into a line."""

    postgres: bool
    # The most rows one chunk may hold on this engine.
    max_batch_rows: int = DEFAULT_BATCH_ROWS

    def timestamp(self, sql: str) -> str:
        raise NotImplementedError

    def size(self, sql: str) -> str:
        raise NotImplementedError

    def value(self, sql: str, kind: Kind) -> str:
        """A column's value for the row's line: times as RFC 3339 text in UTC."""
        return self.timestamp(sql) if kind is Kind.TIMESTAMP else sql

    def select(self, shape: Shape) -> str:
        raise NotImplementedError


class _Postgres(_Dialect):
    postgres = True

    def timestamp(self, sql: str) -> str:
        return f"""to_char({sql} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

    def size(self, sql: str) -> str:
        return f"octet_length(CAST({sql} AS TEXT))"

    def select(self, shape: Shape) -> str:
        columns = ", ".join(
            f"{self.value(_SOURCES[column.name], column.kind)} AS {column.name}"
            for column in COLUMNS
        )
        if shape == "csv":
            # COPY ... (FORMAT csv, FORCE_QUOTE *) quotes each non-null value.
            return f"SELECT {columns}{_PG_JOINS}"
        # row_to_json: compact, in column order, JSONB columns embedded as JSON values. The
        # chunk's lines come back joined, as one bytea value (see _rows_sql).
        return (
            "SELECT row_to_json(x)::text AS line, m.completed_at AS k1, m.id AS k2"
            f"{_PG_JOINS} CROSS JOIN LATERAL (SELECT {columns}) x"
        )


class _SQLite(_Dialect):
    postgres = False
    # Rows arrive as Python objects (a dict and a str each), not as one buffer of bytes:
    # smaller chunks keep the process as small as on PostgreSQL.
    max_batch_rows = 1_000

    def timestamp(self, sql: str) -> str:
        # Stored as Python's str() of the UTC time: "2026-11-29 23:00:00[.123456]+00:00".
        return (
            f"(substr({sql}, 1, 10) || 'T' || substr({sql}, 12, 8) || "
            f"CASE WHEN substr({sql}, 20, 1) = '.' THEN substr({sql}, 20, 7) "
            f"ELSE '.000000' END || 'Z')"
        )

    def size(self, sql: str) -> str:
        return f"length(CAST({sql} AS BLOB))"

    def select(self, shape: Shape) -> str:
        if shape == "csv":
            # Quoted, quotes doubled; NULL stays NULL through || and becomes an empty field.
            fields = " || ',' || ".join(
                "coalesce('\"' || replace(CAST("
                + self.value(_SOURCES[column.name], column.kind)
                + " AS TEXT), '\"', '\"\"') || '\"', '')"
                for column in COLUMNS
            )
            return f"SELECT {fields} AS line{_JOINS}"
        pairs = ", ".join(
            f"'{column.name}', "
            + (
                f"json({_SOURCES[column.name]})"
                if column.kind is Kind.JSON
                else self.value(_SOURCES[column.name], column.kind)
            )
            for column in COLUMNS
        )
        return f"SELECT json_object({pairs}) AS line{_JOINS}"


def _dialect() -> _Dialect:
    return _Postgres() if isinstance(current_engine(), PostgresEngine) else _SQLite()


@cache
def _rows_sql(postgres: bool, shape: Shape, filters: str) -> str:
    dialect = _Postgres() if postgres else _SQLite()
    # The limit is the number of keys in the chunk, which bounds its rows: it changes no
    # result, but caps the planner's estimate (past the index's statistics it can guess a
    # chunk ten times too large, and PostgreSQL then JIT-compiles every chunk's query).
    sql = dialect.select(shape) + _WHERE + filters + _ORDER + " LIMIT {}"
    if postgres and shape == "jsonl":
        # One value for the whole chunk, as bytes: no per-row message to parse, no text to
        # decode and encode again (COPY's text format would also double every backslash).
        sql = (
            "SELECT convert_to(string_agg(line, E'\\n' ORDER BY k1, k2) || E'\\n', 'UTF8') "  # noqa: S608
            f"AS data, count(*) AS rows FROM ({sql}) s"
        )
    return sql


def _filters(selection: Selection) -> tuple[str, list[Any]]:
    sql, args = "", list[Any]()
    if selection.owner is not None:
        sql += " AND c.owner_key = {}"
        args.append(selection.owner)
    if selection.config is not None:
        sql += " AND c.config_name = {}"
        args.append(selection.config)
    if selection.since is not None:
        sql += " AND m.created_at >= {}"
        args.append(selection.since)
    if selection.until is not None:
        sql += " AND m.created_at < {}"
        args.append(selection.until)
    return sql, args


async def iter_chunks(
    window: Window,
    selection: Selection,
    shape: Shape,
    *,
    scan_rows: int = DEFAULT_SCAN_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> AsyncGenerator[Chunk, None]:
    """Every finished message in ``window`` that ``selection`` takes, oldest finish first,
    as CSV or JSON lines; never more than ``batch_rows`` rows (and, past the first row,
    about ``batch_bytes`` bytes of text) in one chunk."""
    dialect = _dialect()
    batch_rows = min(batch_rows, dialect.max_batch_rows)
    sizes = " + ".join(f"coalesce({dialect.size(column)}, 0)" for column in _SIZE_COLUMNS)
    keys_sql = (
        f"SELECT m.completed_at AS completed_at, m.id AS id, {sizes} AS size "  # noqa: S608
        "FROM message m WHERE (m.completed_at, m.id) > ({}, {}) AND m.completed_at <= {} "
        "ORDER BY m.completed_at, m.id LIMIT {}"
    )
    filters, filter_args = _filters(selection)
    rows_sql = _rows_sql(dialect.postgres, shape, filters)
    cursor: tuple[datetime, uuid.UUID] = (
        (EPOCH, NIL) if window.after is None else (window.after, MAX_ID)
    )
    while True:
        keys = await fetch(keys_sql, cursor[0], cursor[1], window.through, scan_rows)
        if not keys:
            return
        start, count, weight = cursor, 0, 0
        for key in keys:
            count += 1
            weight += int(key["size"])
            if count >= batch_rows or weight >= batch_bytes:
                end = (key["completed_at"], key["id"])
                chunk = await _chunk(dialect, rows_sql, shape, [*start, *end, *filter_args, count])
                if chunk.rows:
                    yield chunk
                start, count, weight = end, 0, 0
        last = keys[-1]
        cursor = (last["completed_at"], last["id"])
        if count:
            chunk = await _chunk(dialect, rows_sql, shape, [*start, *cursor, *filter_args, count])
            if chunk.rows:
                yield chunk
        if len(keys) < scan_rows:
            return


async def _chunk(dialect: _Dialect, sql: str, shape: Shape, args: list[Any]) -> Chunk:
    if dialect.postgres and shape == "csv":
        return await _copy_out(sql, args)
    rows = await fetch(sql, *args)
    if dialect.postgres:
        return Chunk(data=rows[0]["data"] or b"", rows=rows[0]["rows"])
    if not rows:
        return Chunk(data=b"", rows=0)
    text = "\n".join(row["line"] for row in rows) + "\n"
    return Chunk(data=text.encode(), rows=len(rows))


async def _copy_out(sql: str, args: list[Any]) -> Chunk:
    """``COPY (query) TO STDOUT (FORMAT csv, FORCE_QUOTE *)`` on the current transaction's
    connection, or a pooled one."""
    engine = current_engine()
    assert isinstance(engine, PostgresEngine)
    parts: list[bytes] = []

    async def collect(data: bytes) -> None:
        parts.append(data)

    options: dict[str, Any] = {"format": "csv", "force_quote": True}
    statement = _numbered(sql)
    transaction = engine.current_transaction.get()
    if transaction is not None:
        status = await transaction.connection.copy_from_query(
            statement, *args, output=collect, **options
        )
    elif engine.pool is not None:
        async with engine.pool.acquire() as connection:
            status = await connection.copy_from_query(statement, *args, output=collect, **options)
    else:
        connection = await engine.get_new_connection()
        try:
            status = await connection.copy_from_query(statement, *args, output=collect, **options)
        finally:
            await connection.close()
    return Chunk(data=b"".join(parts), rows=int(status.split()[-1]))
