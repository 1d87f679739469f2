"""The engine port: each rule's two implementations give the same results, on real
PostgreSQL and real SQLite.

- percentiles: ``percentile_cont`` in PostgreSQL's aggregate and the values interpolated
  in Python for SQLite, on the edge cases (no value, one, ties, even counts, nulls, rows
  the filter leaves out), equal to the float; the evaluation report's numpy percentile
  agrees;
- time buckets: the same stored times fall in the same hour and day;
- bulk reads: the same statement read as tuples and as CSV (COPY against SQLite's own
  lines) gives the same rows, types, nulls and unicode, byte for byte;
- notifications: a message sent from another connection, and from another process, reaches
  a listener within a bound, in order, each once; a rolled-back one never does.

The claim's parity test is ``tests/core/messages/test_claim_parity.py``.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.db.engine import atomic, using
from functions.core.db.notifications import Subscription, notify
from functions.core.db.port import (
    Percentile,
    current_port,
    float8_text,
    percentile_cont,
    port_for,
)
from functions.core.db.sql import fetch
from functions.core.evals.stats import percentile as numpy_percentile
from tests.support import process
from tests.support.timing import scaled

# Groups of values (None: a null; a value in ``LEFT_OUT`` is filtered out by ``within``).
GROUPS: dict[str, list[float | None]] = {
    "a empty": [],
    "b one": [7.25],
    "c two": [1.0, 4.0],
    "d ties": [2.0, 2.0, 2.0, 5.0],
    "e even": [10.0, 1.0, 7.0, 3.0, 9.0, 4.0],
    "f odd": [0.3, 0.1, 0.2],
    "g nulls": [None, 3.5, None, 1.5],
    "h spread": [-1e6, 0.1, 3.3333333333, 1e9, 12.5],
    "i only nulls": [None, None],
}
FRACTIONS = (0.0, 0.25, 0.5, 0.95, 1.0)
LEFT_OUT = 999.0  # a value in every group, outside ``within``: must change nothing


def values_source() -> str:
    """A FROM clause over every group's rows (VALUES: column1 group, column2 value,
    column3 whether ``within`` holds), ending in its WHERE condition."""
    rows = []
    for group, values in GROUPS.items():
        for value in [*values, LEFT_OUT]:
            number = "NULL" if value is None else repr(value)
            keep = 0 if value == LEFT_OUT else 1
            rows.append(f"('{group}', CAST({number} AS DOUBLE PRECISION), {keep})")
    return f" FROM (VALUES {', '.join(rows)}) m WHERE true"


PERCENTILES = [
    Percentile(f"p{int(fraction * 100)}", "m.column2", fraction) for fraction in FRACTIONS
]


async def aggregated(engine: Engine[Any]) -> list[dict[str, Any]]:
    with using(engine):
        return await port_for(engine).aggregate(
            keys={"grp": "m.column1"},
            columns="count(*) AS n",
            source=values_source(),
            args=[],
            percentiles=PERCENTILES,
            within="m.column3 = 1",
        )


async def test_percentiles_are_the_same_float_on_both_engines(
    pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> None:
    on_postgres = await aggregated(pg_engine)
    on_sqlite = await aggregated(sqlite_engine)

    assert on_postgres == on_sqlite
    assert [row["grp"] for row in on_postgres] == sorted(GROUPS)
    for row in on_postgres:
        values = [v for v in GROUPS[row["grp"]] if v is not None]
        assert row["n"] == len(GROUPS[row["grp"]]) + 1  # the left-out row is counted
        for p in PERCENTILES:
            assert row[p.name] == percentile_cont(values, p.fraction)
            expected = numpy_percentile(values, p.fraction * 100)
            assert row[p.name] == (None if expected is None else pytest.approx(expected))
    by_group = {row["grp"]: row for row in on_postgres}
    # The edge cases are what they say: nothing, one value, ties, halfway between two.
    assert by_group["a empty"]["p50"] is None
    assert by_group["i only nulls"]["p95"] is None
    assert {by_group["b one"][p.name] for p in PERCENTILES} == {7.25}
    assert by_group["d ties"]["p50"] == 2.0
    assert by_group["e even"]["p50"] == 5.5
    assert by_group["g nulls"]["p50"] == 2.5


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.95, 3.0),
        ([1.0, 2.0], 0.5, 1.5),
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.5),
        ([1.0, 1.0, 1.0, 9.0], 0.5, 1.0),
        ([0.0, 10.0], 0.95, 9.5),
        ([5.0, 1.0, 3.0], 0.0, 1.0),
        ([5.0, 1.0, 3.0], 1.0, 5.0),
    ],
)
def test_percentile_cont_in_python(
    values: list[float], fraction: float, expected: float | None
) -> None:
    assert percentile_cont(values, fraction) == expected


TIMES = [
    datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 30, 0, 0, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 0, 0, 1, tzinfo=UTC),
]


async def buckets(engine: Engine[Any]) -> list[tuple[str, str]]:
    with using(engine):
        port = port_for(engine)
        async with atomic():
            await fetch("CREATE TEMPORARY TABLE stamped (at TIMESTAMP WITH TIME ZONE)")
            for at in TIMES:
                # As the tables store a time: a timestamptz, or SQLite's str() of it.
                await fetch(
                    "INSERT INTO stamped (at) VALUES ({})",
                    at if port.name == "postgres" else str(at),
                )
            rows = await fetch(
                f"SELECT {port.bucket_start('at', 'hour')} AS hour, "
                f"{port.bucket_start('at', 'day')} AS day FROM stamped ORDER BY at"
            )
            await fetch("DROP TABLE stamped")
    return [(row["hour"], row["day"]) for row in rows]


async def test_time_buckets_are_the_same_text(
    pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> None:
    on_postgres = await buckets(pg_engine)
    assert on_postgres == await buckets(sqlite_engine)
    assert on_postgres == [
        ("2026-11-29 23:00:00", "2026-11-29 00:00:00"),
        ("2026-11-30 00:00:00", "2026-11-30 00:00:00"),
        ("2026-12-31 23:00:00", "2026-12-31 00:00:00"),
    ]


# Text with what CSV must escape (quotes, commas, newlines), unicode, nulls, numbers.
BULK = (
    "SELECT column1 AS id, column2 AS label, column3 AS count, column4 AS ratio "
    "FROM (VALUES (1, 'plain', 5, CAST(0.5 AS DOUBLE PRECISION)), "
    "(2, 'a \"quoted\", comma', NULL, CAST(-2.25 AS DOUBLE PRECISION)), "
    "(3, NULL, 0, NULL), "
    "(4, '안녕 👋' || char_sep() || 'second line', -7, CAST(1e-7 AS DOUBLE PRECISION)), "
    "(5, '', 2147483648, CAST(123456.789 AS DOUBLE PRECISION)), "
    "(6, 'whole', 1, CAST(12.0 AS DOUBLE PRECISION))) v "
    "WHERE column1 >= {} ORDER BY column1 LIMIT {}"
)


def bulk_sql(engine: Engine[Any]) -> str:
    # A newline inside the text: chr(10) on PostgreSQL, char(10) on SQLite.
    newline = "chr(10)" if port_for(engine).name == "postgres" else "char(10)"
    return BULK.replace("char_sep()", newline)


async def read_bulk(engine: Engine[Any]) -> tuple[list[tuple[Any, ...]], bytes, int]:
    with using(engine):
        async with current_port().bulk_reader() as reader:
            rows = [tuple(row) for row in await reader.rows(bulk_sql(engine), [2, 10])]
            data, count = await reader.csv(bulk_sql(engine), [2, 10])
            # The second read of a statement reuses its CSV form: the same again.
            assert await reader.csv(bulk_sql(engine), [2, 10]) == (data, count)
            assert await reader.csv(bulk_sql(engine), [99, 10]) == (b"", 0)
    return rows, data, count


async def test_bulk_reads_give_the_same_rows_and_bytes(
    pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> None:
    pg_rows, pg_csv, pg_count = await read_bulk(pg_engine)
    sqlite_rows, sqlite_csv, sqlite_count = await read_bulk(sqlite_engine)

    assert pg_rows == sqlite_rows
    assert [[type(value) for value in row] for row in pg_rows] == [
        [type(value) for value in row] for row in sqlite_rows
    ]
    assert pg_rows == [
        (2, 'a "quoted", comma', None, -2.25),
        (3, None, 0, None),
        (4, "안녕 👋\nsecond line", -7, 1e-7),
        (5, "", 2147483648, 123456.789),
        (6, "whole", 1, 12.0),
    ]
    assert pg_csv == sqlite_csv
    assert (pg_count, sqlite_count) == (5, 5)
    assert pg_csv.decode() == (
        '"2","a ""quoted"", comma",,"-2.25"\n'
        '"3",,"0",\n'
        '"4","안녕 👋\nsecond line","-7","1e-07"\n'
        '"5","","2147483648","123456.789"\n'
        '"6","whole","1","12"\n'
    )


FLOATS = [
    *(1.0, 0.5, -2.25, 1e-7, 123456.789, 100.0, 12.5, 0.1, -1e6, 1 / 3, 0.0, -0.0),
    # Where the exponent form starts and ends, and the extremes.
    *(1e15, 1e14, 999999999999999.0, 1e16, 1234567890123456.7, 0.0001, 0.00001),
    *(1e300, 1.5e-300, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf")),
    float("nan"),
]


async def test_floats_are_written_as_postgresql_writes_them(pg_engine: Engine[Any]) -> None:
    with using(pg_engine):
        for value in FLOATS:
            rows = await fetch("SELECT CAST(CAST({} AS DOUBLE PRECISION) AS TEXT) AS t", value)
            assert float8_text(value) == rows[0]["t"], value


async def test_bulk_reads_inside_a_transaction_see_its_writes(db: Engine[Any]) -> None:
    await fetch("CREATE TEMPORARY TABLE written (id INTEGER, note TEXT)")
    await fetch("INSERT INTO written (id, note) VALUES (1, 'uncommitted ✓')")
    async with current_port().bulk_reader() as reader:
        assert [tuple(r) for r in await reader.rows("SELECT id, note FROM written", [])] == [
            (1, "uncommitted ✓")
        ]
        assert await reader.csv("SELECT id, note FROM written", []) == (
            '"1","uncommitted ✓"\n'.encode(),
            1,
        )


async def notify_then_fail() -> None:
    async with atomic():
        await notify("parity_test", "rolled back")
        raise RuntimeError("undo")


NOTIFY_SCRIPT = """
import asyncio, sys
from functions.core.db.engine import engine_from_url, using
from functions.core.db.notifications import notify

async def main() -> None:
    with using(engine_from_url(sys.argv[1])):
        await notify(sys.argv[2], sys.argv[3])

asyncio.run(main())
"""


@pytest.fixture(params=["postgres", "sqlite"])
def database(
    request: pytest.FixtureRequest,
    pg_engine: Engine[Any],
    sqlite_engine: Engine[Any],
    pg_url: str,
) -> tuple[Engine[Any], str]:
    """An engine under test and its URL (for another process), with no transaction open."""
    if request.param == "postgres":
        return pg_engine, pg_url
    return sqlite_engine, f"sqlite:///{sqlite_engine.path}"


async def test_notifications_reach_a_listener_in_order_once_and_only_when_committed(
    database: tuple[Engine[Any], str],
) -> None:
    engine, url = database
    heard: list[str] = []
    states: list[str] = []
    got = asyncio.Event()

    def on_message(payload: str) -> None:
        heard.append(payload)
        got.set()

    async def heard_all(count: int) -> None:
        while len(heard) < count:
            got.clear()
            await got.wait()

    listener = port_for(engine).listener()
    listener.subscribe(
        Subscription(
            channel="parity_test",
            on_message=on_message,
            on_listening=lambda: states.append("listening"),
            on_lost=lambda: states.append("lost"),
        )
    )
    listener.subscribe(Subscription(channel="parity_other", on_message=lambda _: None))
    listener.start()
    try:
        await asyncio.wait_for(listener.listening.wait(), scaled(10))
        with using(engine):
            # Rolled back: never delivered. Committed: delivered once, in order.
            with pytest.raises(RuntimeError, match="undo"):
                await notify_then_fail()
            async with atomic():
                await notify("parity_test", "first ✓")
                await notify("parity_other", "not this channel")
            await notify("parity_test", "second 👋")
        # From another process: the CLI, a checker, another worker.
        await asyncio.to_thread(
            process.run,
            [sys.executable, "-c", NOTIFY_SCRIPT, url, "parity_test", "from another process"],
            check=True,
            timeout=scaled(60),
        )
        await asyncio.wait_for(heard_all(3), scaled(10))
        # Nothing more comes: a late delivery of the rolled-back one would show here.
        await asyncio.sleep(scaled(1))
        assert heard == ["first ✓", "second 👋", "from another process"]
    finally:
        await listener.stop()
    assert states == ["lost", "listening", "lost", "lost"]
    assert not listener.listening.is_set()
