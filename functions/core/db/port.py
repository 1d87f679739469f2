"""The engine port: each rule PostgreSQL and SQLite implement differently, both ways side
by side behind one interface, chosen by the engine the current context runs on.

Services ask :func:`current_port` and never which engine they run on; the parity tests
(``tests/core/db/test_engine_parity.py``) run the same inputs through both
implementations, on real databases, and require the same results.

- notifications: PostgreSQL ``NOTIFY`` heard on one ``LISTEN`` connection; SQLite a
  ``notification_log`` row, polled.
- bulk reads: PostgreSQL ``COPY (…) TO STDOUT`` for CSV and asyncpg records; SQLite lines
  built by its ``format()`` and plain tuples, on one connection.
- percentiles: PostgreSQL ``percentile_cont`` in the aggregate; SQLite the rows' values,
  sorted and interpolated by :func:`percentile_cont` (the same arithmetic).
- time buckets: PostgreSQL ``date_trunc`` of the UTC time; SQLite the stored UTC text's
  prefix.

The claim is the fifth such rule (``switchboard_claim_v2`` in PL/pgSQL, the same steps as
statements on SQLite; ``tests/core/messages/test_claim_parity.py``). It stays chosen in
``functions.core.messages.claim``: it runs on every send, where one lookup more counts.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import aiosqlite
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from functions.core.db.engine import current_engine
from functions.core.db.notifications import (
    Listener,
    PollingListener,
    PostgresListener,
    log_notification,
    pg_notify,
)
from functions.core.db.sql import _numbered, fetch, pg_connection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from piccolo.engine.base import Engine

Bucket = Literal["hour", "day"]


class Percentile(NamedTuple):
    """A percentile to aggregate: its result's name, the column, the fraction (0..1)."""

    name: str
    column: str
    fraction: float


def percentile_cont(values: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont(fraction)``: the value at ``fraction`` of the way
    through the sorted values, interpolated linearly between the two nearest (the same
    arithmetic, so the same float); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
    return low + (high - low) * (position - math.floor(position))


_NOT_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def float8_text(value: float) -> str:
    """``value`` as PostgreSQL writes a ``double precision`` (``float8out``): the shortest
    digits that read back the same (as ``repr``), in exponent form from 1e15 and below
    1e-4, and no ``.0`` on a whole number."""
    text = repr(value)
    if 1e-4 <= abs(value) < 1e15 or value == 0:
        # Both write these without an exponent, the same digits: only Python's ".0" differs
        # (the common case, so it costs one repr: exports call this for every float).
        return text[:-2] if text.endswith(".0") else text
    if not math.isfinite(value):
        return _NOT_FINITE["nan" if math.isnan(value) else text]
    # Exponent form on both sides: PostgreSQL's has no ".0" and at least two digits of
    # exponent ("1e+15", "5e-324"), Python's switches only from 1e16.
    sign, digits, exponent = Decimal(text).as_tuple()
    assert isinstance(exponent, int)
    significant = "".join(map(str, digits)).rstrip("0")
    power = len(digits) + exponent - 1
    mantissa = significant[0] + ("." + significant[1:] if len(significant) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"


class BulkReader(Protocol):
    """Many rows of one statement (``{}`` placeholders), as cheaply as the engine allows."""

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """The rows as sequences of values (not a dict per row)."""
        ...

    async def csv(self, sql: str, args: Sequence[Any]) -> tuple[bytes, int]:
        """The rows as CSV lines (every non-null value quoted, null an empty field, values
        as the engine renders them as text) and how many rows."""
        ...


class EnginePort(Protocol):
    """What differs between the engines (see the module docstring)."""

    name: Literal["postgres", "sqlite"]

    async def notify(self, channel: str, payload: str) -> None:
        """Send ``payload`` on ``channel``; inside a transaction, at its commit only."""
        ...

    def listener(self) -> Listener:
        """A new listener for this database's notifications (not started)."""
        ...

    def bulk_reader(self) -> contextlib.AbstractAsyncContextManager[BulkReader]:
        """``async with``: a reader for many statements in a row (a bulk read)."""
        ...

    def bucket_start(self, column: str, bucket: Bucket) -> str:
        """SQL for the start of ``column``'s hour or day in UTC, as
        ``YYYY-MM-DD HH:MM:SS`` text."""
        ...

    async def aggregate(
        self,
        *,
        keys: Mapping[str, str],
        columns: str,
        source: str,
        args: Sequence[Any],
        percentiles: Sequence[Percentile],
        within: str,
    ) -> list[dict[str, Any]]:
        """``SELECT <keys>, <columns>, <percentiles> <source> GROUP BY <keys> ORDER BY
        <keys>``: ``keys`` names the grouping expressions, ``source`` is a ``FROM`` clause
        ending in its ``WHERE`` condition, and each percentile is of the group's rows where
        ``within`` also holds (nulls ignored, as ``percentile_cont`` does)."""
        ...


def _grouping(keys: Mapping[str, str]) -> tuple[str, str]:
    select = ", ".join(f"{sql} AS {name}" for name, sql in keys.items())
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    return select, positions


class PostgresPort:
    """PostgreSQL's side of every rule."""

    name: Literal["postgres", "sqlite"] = "postgres"

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def notify(self, channel: str, payload: str) -> None:
        await pg_notify(channel, payload)

    def listener(self) -> Listener:
        return PostgresListener(self._engine.config["dsn"])

    @contextlib.asynccontextmanager
    async def bulk_reader(self) -> AsyncIterator[BulkReader]:
        yield _PostgresBulk(self._engine)

    def bucket_start(self, column: str, bucket: Bucket) -> str:
        return (
            f"to_char(date_trunc('{bucket}', {column} AT TIME ZONE 'UTC'), 'YYYY-MM-DD HH24:MI:SS')"
        )

    async def aggregate(
        self,
        *,
        keys: Mapping[str, str],
        columns: str,
        source: str,
        args: Sequence[Any],
        percentiles: Sequence[Percentile],
        within: str,
    ) -> list[dict[str, Any]]:
        select, positions = _grouping(keys)
        # In the one statement: the database sorts each group's values itself.
        measured = "".join(
            f", percentile_cont({p.fraction}) WITHIN GROUP (ORDER BY {p.column}) "
            f"FILTER (WHERE {within}) AS {p.name}"
            for p in percentiles
        )
        return await fetch(
            f"SELECT {select}, {columns}{measured}{source} "
            f"GROUP BY {positions} ORDER BY {positions}",
            *args,
        )


class _PostgresBulk:
    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        # asyncpg records, decoded in C: not turned into dicts as ``fetch`` does.
        async with pg_connection(self._engine) as connection:
            records: Sequence[Sequence[Any]] = await connection.fetch(_numbered(sql), *args)
        return records

    async def csv(self, sql: str, args: Sequence[Any]) -> tuple[bytes, int]:
        parts: list[bytes] = []

        async def collect(data: bytes) -> None:
            parts.append(data)

        async with pg_connection(self._engine) as connection:
            # FORCE_QUOTE *: every non-null value quoted; null stays an empty field.
            status = await connection.copy_from_query(
                _numbered(sql), *args, output=collect, format="csv", force_quote=True
            )
        return b"".join(parts), int(status.split()[-1])


class SQLitePort:
    """SQLite's side of every rule."""

    name: Literal["postgres", "sqlite"] = "sqlite"

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine

    async def notify(self, channel: str, payload: str) -> None:
        await log_notification(channel, payload)

    def listener(self) -> Listener:
        return PollingListener(self._engine)

    @contextlib.asynccontextmanager
    async def bulk_reader(self) -> AsyncIterator[BulkReader]:
        # The current transaction's connection, or one of the reader's own (a connection
        # per statement, each with its thread, costs about as much as reading a chunk).
        transaction = self._engine.current_transaction.get()
        if transaction is not None:
            yield await _SQLiteBulk.on(transaction.connection)
            return
        async with aiosqlite.connect(**self._engine.connection_kwargs) as connection:
            yield await _SQLiteBulk.on(connection)

    def bucket_start(self, column: str, bucket: Bucket) -> str:
        # Stored as Python's str() of the UTC time: "2026-11-29 23:00:00.123456+00:00".
        if bucket == "hour":
            return f"substr({column}, 1, 13) || ':00:00'"
        return f"substr({column}, 1, 10) || ' 00:00:00'"

    async def aggregate(
        self,
        *,
        keys: Mapping[str, str],
        columns: str,
        source: str,
        args: Sequence[Any],
        percentiles: Sequence[Percentile],
        within: str,
    ) -> list[dict[str, Any]]:
        select, positions = _grouping(keys)
        grouped = await fetch(
            f"SELECT {select}, {columns}{source} GROUP BY {positions} ORDER BY {positions}",
            *args,
        )
        # No percentile aggregate: the values themselves, sorted and interpolated here.
        measured = "".join(f", {p.column} AS {p.name}" for p in percentiles)
        rows = await fetch(f"SELECT {select}{measured}{source} AND ({within})", *args)
        values: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for row in rows:
            group = values[tuple(row[name] for name in keys)]
            for p in percentiles:
                if row[p.name] is not None:
                    group[p.name].append(float(row[p.name]))
        for row in grouped:
            group = values.get(tuple(row[name] for name in keys), {})
            for p in percentiles:
                row[p.name] = percentile_cont(group.get(p.name, []), p.fraction)
        return grouped


class _SQLiteBulk:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        # Each statement's CSV form, built once per reader from its columns' names.
        self._csv_sql: dict[str, str] = {}

    @classmethod
    async def on(cls, connection: aiosqlite.Connection) -> _SQLiteBulk:
        # SQLite writes 1.0 as "1.0" and 1e-7 as "1.0e-07", PostgreSQL "1" and "1e-07": a
        # CSV line's floats are written as PostgreSQL does (one call per float value).
        await connection.create_function(_FLOAT8_TEXT, 1, float8_text, deterministic=True)
        return cls(connection)

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        # Tuples, not the dict per row Piccolo's connections make (a Python call each).
        async with self._connection.execute(sql.replace("{}", "?"), list(args)) as cursor:
            cursor.row_factory = None
            return list(await cursor.fetchall())

    async def csv(self, sql: str, args: Sequence[Any]) -> tuple[bytes, int]:
        lines = await self.rows(await self._as_csv(sql, args), [*args])
        if not lines:
            return b"", 0
        return ("\n".join(line[0] for line in lines) + "\n").encode(), len(lines)

    async def _as_csv(self, sql: str, args: Sequence[Any]) -> str:
        """``sql`` with each row made one CSV line by SQLite (``format``'s ``%w`` doubles
        quotes): faster than building lines from Python values."""
        found = self._csv_sql.get(sql)
        if found is not None:
            return found
        probe = f"SELECT * FROM ({sql}) LIMIT 0".replace("{}", "?")  # noqa: S608
        async with self._connection.execute(probe, list(args)) as cursor:
            names = [column[0] for column in cursor.description]
        # One typeof() per value: null an empty field, a float written as PostgreSQL does.
        fields = ", ".join(
            f"CASE typeof({quoted}) WHEN 'null' THEN '' "
            f"WHEN 'real' THEN format('\"%w\"', {_FLOAT8_TEXT}({quoted})) "
            f"ELSE format('\"%w\"', {quoted}) END"
            for quoted in ('"' + name.replace('"', '""') + '"' for name in names)
        )
        line = ",".join(["%s"] * len(names))
        found = self._csv_sql[sql] = f"SELECT format('{line}', {fields}) FROM ({sql})"  # noqa: S608
        return found


_FLOAT8_TEXT = "switchboard_float8_text"


def port_for(engine: Engine[Any]) -> EnginePort:
    """The port of ``engine`` (a PostgreSQL or a SQLite engine)."""
    if isinstance(engine, PostgresEngine):
        return PostgresPort(engine)
    if isinstance(engine, SQLiteEngine):
        return SQLitePort(engine)
    raise TypeError(f"no engine port for {type(engine).__name__}")


def current_port() -> EnginePort:
    """The port of the engine the current context runs on."""
    return port_for(current_engine())
