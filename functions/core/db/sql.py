"""Hand-written statements for the hot path, on whichever engine is current.

Piccolo's query builder costs a few hundred microseconds of CPU per query; the send path
runs about ten, so it uses fixed SQL instead (``{}`` placeholders, portable between
PostgreSQL and SQLite). It joins the current transaction like any Piccolo query.
"""

from __future__ import annotations

from typing import Any

from piccolo.querystring import QueryString

from functions.core.db.engine import current_engine


async def fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] | None = await current_engine().run_querystring(
        QueryString(sql, *args)
    )
    return rows or []
