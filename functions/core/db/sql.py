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


async def fetch(sql: str, *args: Any, savepoint: bool = False) -> list[dict[str, Any]]:
    """Run one statement; ``savepoint`` keeps a failing statement from aborting an
    enclosing transaction (PostgreSQL aborts the whole transaction on any error)."""
    engine = current_engine()
    if isinstance(engine, PostgresEngine):
        statement = _numbered(sql)
        transaction = engine.current_transaction.get()
        if transaction is not None and savepoint:
            async with transaction.connection.transaction():
                records = await transaction.connection.fetch(statement, *args)
        elif transaction is not None:
            records = await transaction.connection.fetch(statement, *args)
        elif engine.pool is not None:
            async with engine.pool.acquire() as connection:
                records = await connection.fetch(statement, *args)
        else:
            connection = await engine.get_new_connection()
            try:
                records = await connection.fetch(statement, *args)
            finally:
                await connection.close()
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


def rows_within(sizes: list[int], max_bytes: int) -> int:
    """How many rows of these ``sizes`` (in order) a page of about ``max_bytes`` holds:
    never more than fit, and always at least one (a page always moves on)."""
    taken, total = 0, 0
    for size in sizes:
        total += size
        if taken and total > max_bytes:
            break
        taken += 1
    return taken
