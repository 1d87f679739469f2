"""Hand-written statements for the hot path, on whichever engine is current.

Piccolo's query builder costs a few hundred microseconds of CPU per query; the send path
runs several, so it uses fixed SQL instead (``{}`` placeholders, portable between
PostgreSQL and SQLite). It joins the current transaction like any Piccolo query. On
PostgreSQL it talks to asyncpg directly (statements are prepared once per connection).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from piccolo.engine.postgres import PostgresEngine
from piccolo.querystring import QueryString

from functions.core.db.engine import current_engine


@cache
def _numbered(sql: str) -> str:
    """``{}`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("{}")
    return "".join(
        part + (f"${index}" if index < len(parts) else "")
        for index, part in enumerate(parts, start=1)
    )


class pg_connection:  # noqa: N801 - used like a function: ``async with pg_connection(e)``
    """The asyncpg connection a statement runs on: the current transaction's, else a pooled
    one, else a new one (closed after). A class, not a generator: the send path enters it
    for every statement."""

    __slots__ = ("_acquired", "_engine", "_new")

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine
        self._acquired: Any = None
        self._new: Any = None

    async def __aenter__(self) -> Any:
        transaction = self._engine.current_transaction.get()
        if transaction is not None:
            return transaction.connection
        if self._engine.pool is not None:
            self._acquired = self._engine.pool.acquire()
            return await self._acquired.__aenter__()
        self._new = await self._engine.get_new_connection()
        return self._new

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._acquired is not None:
            await self._acquired.__aexit__(*exc_info)
        elif self._new is not None:
            await self._new.close()


async def fetch(sql: str, *args: Any, savepoint: bool = False) -> list[dict[str, Any]]:
    """Run one statement; ``savepoint`` keeps a failing statement from aborting an
    enclosing transaction (PostgreSQL aborts the whole transaction on any error)."""
    engine = current_engine()
    if isinstance(engine, PostgresEngine):
        statement = _numbered(sql)
        async with pg_connection(engine) as connection:
            if savepoint and engine.current_transaction.get() is not None:
                async with connection.transaction():
                    records = await connection.fetch(statement, *args)
            else:
                records = await connection.fetch(statement, *args)
        return [dict(record) for record in records]
    rows: list[dict[str, Any]] | None = await engine.run_querystring(QueryString(sql, *args))
    return rows or []


def json_column(value: Any) -> Any:
    """A JSON column's value: SQLite (and Piccolo's query builder) hand it back as text."""
    return msgspec.json.decode(value) if isinstance(value, str) else value


def size_sql(columns: tuple[str, ...]) -> str:
    """SQL for the bytes a row's ``columns`` hold, as text, on the current engine."""
    postgres = isinstance(current_engine(), PostgresEngine)
    measure = "octet_length({})" if postgres else "length(CAST({} AS BLOB))"
    return " + ".join(
        f"coalesce({measure.format(f'CAST({column} AS TEXT)')}, 0)" for column in columns
    )


def page_end(
    sizes: list[dict[str, Any]], key: str, *, limit: int, max_bytes: int
) -> tuple[Any, bool]:
    """Where a page ends, from the next rows' ``key`` and ``size`` (read up to ``limit`` + 1,
    in order): its last row's ``key`` (None: no row) and whether rows follow it. A page
    holds at most ``limit`` rows and about ``max_bytes``, and always at least one row (a
    page always moves on)."""
    taken, total = 0, 0
    for row in sizes[:limit]:
        total += int(row["size"])
        if taken and total > max_bytes:
            break
        taken += 1
    if not taken:
        return None, False
    return sizes[taken - 1][key], len(sizes) > taken
