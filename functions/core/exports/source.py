"""Reading finished messages for an export: in chunks, in the order they were written.

Which messages. Every write of a message stamps it with ``change_seq``, the database's change
order (a trigger; ``piccolo_migrations/core_2026_12_07t18_11_00_message_change_triggers``).
An export takes the finished messages whose stamp is in ``[after, through)``, where
``through`` is :func:`current_watermark`, read once as the run starts:

- PostgreSQL: the stamp is the writing transaction's id, and ``through`` the oldest
  transaction still running (``pg_snapshot_xmin(pg_current_snapshot())``). Every writer
  below it has ended and every later one gets a larger id, so nothing can appear below
  ``through`` after it is read: what a run leaves out, the next one takes. A run takes
  everything committed before the oldest write still in progress began (a send's
  transactions last milliseconds; a transaction left open anywhere on the cluster holds
  exports back, never loses a row).
- SQLite: writers are serialised, so a counter bumped inside the writing transaction is
  commit order, and ``through`` is the counter's next value.

Chunks are read statement by statement, not in one snapshot: a row changed meanwhile is
stamped again (past ``through``) and leaves this run's scan for the next run's, which
exports its new version; a deleted one is gone. Each version a run sees is exported once.
An export therefore reads committed history only: on PostgreSQL, inside a transaction that
has written, its own writes are not below ``through`` (:class:`ExportInTransactionError`).

Messages are read by keyset pagination over the ``message_change_seq_idx`` index
(``(m.change_seq, m.id) > (…)``), so the cost of a chunk does not depend on how deep into
the history it is, and memory stays flat whatever the history's size. Each page is read in
two steps: where its chunks end first (the database sums the keys' sizes and hands back
only each chunk's last key and row number), then each chunk's rows: at most ``batch_rows``
rows and about ``batch_bytes`` bytes, so a run of long messages makes smaller chunks,
never a bigger one.

A chunk comes in the shape its writer asks for (``Shape``), columns in
:data:`~functions.core.exports.schemas.COLUMNS` order:

- ``csv``: CSV lines (every non-null value quoted, null an empty field), rendered by the
  database through the engine port's bulk reader (``BulkReader.csv``): PostgreSQL streams
  them with ``COPY (SELECT …) TO STDOUT``, SQLite builds each line with string functions.
  pyarrow parses these for Parquet too, faster than it builds columns from Python values.
- ``jsonl``: JSON object lines, encoded here by msgspec from the row's values, each fetched
  as what a JSON line holds (times as RFC 3339 text, ids as text, JSON columns as their
  JSON text, ``'null'`` when absent). Rendering JSON in the database (``row_to_json``) costs
  PostgreSQL about three times what plain values do: it, not the exporter, bounded the
  export's speed. A chunk's rows are encoded as soon as they arrive, then let go: rows
  that lived on while the next chunk is read (a GC-tracked object each) made Python's
  garbage collector take about a fifth of the exporter's time.

The column list, the joins and the keyset are one query shape for both engines; only how a
value becomes text differs (:class:`_Dialect`). How the rows leave the database (COPY or
tuples, on which connection) is the engine port's (:mod:`functions.core.db.port`).

Only finished messages (``completed_at`` set) are read; a pending reply joins the scan once
it finishes (that write stamps it again).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from msgspec import Raw

from functions.core.db.port import BulkReader, current_port
from functions.core.db.sql import fetch
from functions.core.errors import SwitchboardError
from functions.core.exports.schemas import COLUMNS, SCHEMA_VERSION, Kind

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence
    from datetime import datetime

    from functions.core.exports.schemas import Selection

# Before every id: a scan from ``after`` starts at (after, NIL), so it takes the stamp
# ``after`` itself (the watermark is the first change not yet exported).
NIL = uuid.UUID(int=0)
# Before every stamp (the rows stored before stamping hold 0).
FIRST_SEQ = 0

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
    "change_seq": "m.change_seq",
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
_WHERE = (
    " WHERE (m.change_seq, m.id) > ({}, {}) AND (m.change_seq, m.id) <= ({}, {}) "
    "AND m.completed_at IS NOT NULL"
)
# A series' first run after the upgrade to change order: of the rows stored before (stamp
# 0), only those finished after its old time watermark.
_LEGACY = " AND (m.change_seq > 0 OR m.completed_at > {})"
_ORDER = " ORDER BY m.change_seq, m.id"
# What a message weighs in a chunk: its text and JSON columns, in bytes on either engine.
_SIZE_COLUMNS = ("m.content", "m.content_parts", "m.tool_calls", "m.error_message")

# A JSON line: its fields the columns, in order (a struct encodes its fields in order, its
# field names encoded once: faster than a dict per row). Not GC-tracked: nothing to scan.
_Line = msgspec.defstruct("_Line", [(column.name, Any) for column in COLUMNS], gc=False)
_JSON_COLUMNS = tuple(column.name for column in COLUMNS if column.kind is Kind.JSON)
assert _JSON_COLUMNS == ("content_parts", "tool_calls", "conversation_metadata")
_ENCODER = msgspec.json.Encoder()


class ExportInTransactionError(SwitchboardError):
    """An export was started inside a PostgreSQL transaction that has written."""

    code = "export_in_transaction"


@dataclass(frozen=True)
class Window:
    """Finished messages whose ``change_seq`` is at least ``after`` (None: from the
    beginning) and below ``through``; with ``legacy_through``, of the rows stored before
    stamping only those finished after it."""

    after: int | None
    through: int
    legacy_through: datetime | None = None


async def current_watermark() -> int:
    """Where this export's window ends: no change below it can still appear (see the module's
    docstring)."""
    if not _dialect().postgres:
        rows = await fetch("SELECT value + 1 AS through FROM message_change_counter")
        return int(rows[0]["through"])
    rows = await fetch(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS through, "
        "pg_current_xact_id_if_assigned() IS NOT NULL AS writing"
    )
    if rows[0]["writing"]:
        raise ExportInTransactionError(
            "an export reads committed history: run it outside a transaction that has written "
            "(its own writes are not committed yet)"
        )
    return int(rows[0]["through"])


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
        """A column's value for a CSV line: times as RFC 3339 text in UTC."""
        return self.timestamp(sql) if kind is Kind.TIMESTAMP else sql

    def json_value(self, sql: str, kind: Kind) -> str:
        """A column's value as a JSON line holds it (see ``jsonl`` in the module's doc)."""
        raise NotImplementedError

    def select(self, shape: Shape) -> str:
        raise NotImplementedError

    def columns(self) -> str:
        """The columns of a CSV line (the bulk reader renders the line)."""
        return ", ".join(
            f"{self.value(_SOURCES[column.name], column.kind)} AS {column.name}"
            for column in COLUMNS
        )

    def values(self) -> str:
        return "SELECT " + ", ".join(
            self.json_value(_SOURCES[column.name], column.kind) for column in COLUMNS
        )


class _Postgres(_Dialect):
    postgres = True

    def timestamp(self, sql: str) -> str:
        return f"""to_char({sql} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

    def size(self, sql: str) -> str:
        return f"octet_length(CAST({sql} AS TEXT))"

    def json_value(self, sql: str, kind: Kind) -> str:
        if kind is Kind.TIMESTAMP:
            return self.timestamp(sql)
        if kind is Kind.JSON:
            return f"coalesce(CAST({sql} AS TEXT), 'null')"
        if kind is Kind.TEXT:
            # UUIDs as text: asyncpg makes a str faster than a UUID object.
            return f"CAST({sql} AS TEXT)"
        return sql

    def select(self, shape: Shape) -> str:
        if shape == "jsonl":
            return self.values() + _PG_JOINS
        return f"SELECT {self.columns()}{_PG_JOINS}"


class _SQLite(_Dialect):
    postgres = False
    # Larger chunks gain little here (SQLite runs in this process) and, for Parquet, raise
    # the peak RSS by about 50 MB at 5,000 rows.
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

    def json_value(self, sql: str, kind: Kind) -> str:
        # Every value is an expression: a bare column would go through the converter
        # Piccolo registers for its declared type (a Python call per value).
        if kind is Kind.TIMESTAMP:
            return self.timestamp(sql)
        if kind is Kind.JSON:
            return f"coalesce(json({sql}), 'null')"  # json(): checked and compact
        if kind in (Kind.INT32, Kind.INT64):
            return f"CAST({sql} AS INTEGER)"
        if kind is Kind.FLOAT64:
            return f"CAST({sql} AS REAL)"
        return f"CAST({sql} AS TEXT)"

    def select(self, shape: Shape) -> str:
        if shape == "jsonl":
            return self.values() + _JOINS
        return f"SELECT {self.columns()}{_JOINS}"


def _dialect() -> _Dialect:
    return _Postgres() if current_port().name == "postgres" else _SQLite()


@cache
def _rows_sql(postgres: bool, shape: Shape, filters: str, legacy: bool) -> str:
    dialect = _Postgres() if postgres else _SQLite()
    # The limit is the number of keys in the chunk, which bounds its rows: it changes no
    # result, but caps the planner's estimate (past the index's statistics it can guess a
    # chunk ten times too large, and PostgreSQL then JIT-compiles every chunk's query).
    where = _WHERE + (_LEGACY if legacy else "")
    return dialect.select(shape) + where + filters + _ORDER + " LIMIT {}"


@cache
def _ends_sql(postgres: bool, legacy: bool) -> str:
    """Where a page's chunks end: the last key and row number of each, in order.

    A row's part is its number of whole ``batch_rows`` before it plus its number of whole
    ``batch_bytes`` before it (both only grow along the page): a chunk is a run of rows of
    one part, so it holds at most ``batch_rows`` rows and at most ``batch_bytes`` bytes
    before its last row. Only the ends leave the database, not one row per message.
    """
    dialect = _Postgres() if postgres else _SQLite()
    sizes = " + ".join(f"coalesce({dialect.size(column)}, 0)" for column in _SIZE_COLUMNS)
    order = "OVER (ORDER BY change_seq, id)"
    return (
        "SELECT change_seq, id, n FROM (SELECT change_seq, id, n, part, "  # noqa: S608
        "lead(part) OVER (ORDER BY n) AS next_part FROM (SELECT change_seq, id, "
        f"row_number() {order} AS n, (row_number() {order} - 1) / {{}} + "
        f"(sum(size) {order} - size) / {{}} AS part "
        f"FROM (SELECT m.change_seq AS change_seq, m.id AS id, {sizes} AS size "
        "FROM message m WHERE (m.change_seq, m.id) > ({}, {}) AND m.change_seq < {} "
        f"AND m.completed_at IS NOT NULL{_LEGACY if legacy else ''} "
        "ORDER BY m.change_seq, m.id LIMIT {}) page) parts) ends "
        "WHERE next_part IS NULL OR next_part <> part ORDER BY n"
    )


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
    """Every finished message in ``window`` that ``selection`` takes, in change order,
    in ``shape``; never more than ``batch_rows`` rows (and, past the first row, about
    ``batch_bytes`` bytes of text) in one chunk."""
    dialect = _dialect()
    batch_rows = min(batch_rows, dialect.max_batch_rows)
    legacy = window.legacy_through is not None
    ends_sql = _ends_sql(dialect.postgres, legacy)
    filters, filter_args = _filters(selection)
    rows_sql = _rows_sql(dialect.postgres, shape, filters, legacy)
    legacy_args = [window.legacy_through] if legacy else []
    cursor: tuple[int, uuid.UUID] = (
        FIRST_SEQ if window.after is None else window.after,
        NIL,
    )
    async with current_port().bulk_reader() as reader:
        while True:
            ends = await fetch(
                ends_sql,
                batch_rows,
                batch_bytes,
                *cursor,
                window.through,
                *legacy_args,
                scan_rows,
            )
            if not ends:
                return
            before = 0
            for end in ends:
                key = (int(end["change_seq"]), end["id"])
                count = int(end["n"]) - before
                args = [*cursor, *key, *legacy_args, *filter_args, count]
                chunk = await _chunk(reader, rows_sql, shape, args)
                if chunk.rows:
                    yield chunk
                cursor, before = key, int(end["n"])
            if before < scan_rows:
                return


async def _chunk(reader: BulkReader, sql: str, shape: Shape, args: list[Any]) -> Chunk:
    """One chunk's rows, read by the engine's bulk reader."""
    if shape == "csv":
        data, rows = await reader.csv(sql, args)
        return Chunk(data=data, rows=rows)
    found = await reader.rows(sql, args)
    return Chunk(data=jsonl_lines(found), rows=len(found))


def jsonl_lines(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows of values (``_Dialect.values``) as JSON lines, each ending with ``\\n``."""
    lines: list[Any] = [_Line(*row) for row in rows]
    for line in lines:
        # JSON columns come as their JSON text: embedded as it is, not as a string.
        line.content_parts = Raw(line.content_parts)
        line.tool_calls = Raw(line.tool_calls)
        line.conversation_metadata = Raw(line.conversation_metadata)
    return _ENCODER.encode_lines(lines)
