"""What ``GET /v1/usage`` costs over a large history, and what keeping the rollup costs.

On a throwaway PostgreSQL database (migrated as production is): ``--rows`` ledger rows
(10 million by default) spread over 30 days, 20 keys, 5 configurations of 3 versions, 3
models, 2 upstreams, with failures and cancellations, generated in SQL
(``generate_series``) with the rollup trigger off, then the rollup filled as the migration
fills it. Then, in the same run:

- the month read as ``GET /v1/usage`` reads it (``usage_totals``: the rollup, the Python
  merge and the histograms' percentiles), ungrouped and by key, by config_version and
  model, by day, and a 31-day window by hour;
- the same month read from the ledger with its ``(asked_at)`` index, as a report without
  the rollup would (counts, tokens and ``percentile_cont``): the alternative the rollup
  replaces;
- the trigger's cost on the write path: ``--writes`` ledger rows inserted by one statement
  with the trigger on and off, the difference per row (PostgreSQL's CPU added to each
  exchange's outcome write; the statement runs in the server, so its time is its CPU).

    scripts/with-postgres.sh .venv/bin/python -u -m bench.bench_usage [--rows 10000000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from functions.core.db.engine import engine_from_url
from functions.core.db.migrate import migrate
from functions.core.db.piccolo_migrations import core_2026_12_08t02_20_00_usage_rollup as made
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from functions.core.usage.totals import usage_totals
from tests.support.databases import create_postgres_database, drop_postgres_database

START = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 30


def generate(rows: int, start: datetime, first: int = 1) -> str:
    """``rows`` ledger rows from ``start`` over ``DAYS`` days (numbered from ``first``)."""
    step = DAYS * 86400 / rows
    return (
        "INSERT INTO usage_ledger (id, owner_key, conversation, llm_config, config_name, "
        "config_version, model, upstream, status, error_code, error_message, prompt_tokens, "
        "completion_tokens, ttft_ms, latency_ms, asked_at, finished_at) "
        "SELECT gen_random_uuid(), "
        "('00000000-0000-4000-8000-' || lpad((i % 20)::text, 12, '0'))::uuid, "
        "'00000000-0000-0000-0000-000000000000', NULL, 'config-' || (i % 5), 1 + (i % 3), "
        "'model-' || (i % 3), "
        "'http://llm-' || (i % 2) || ':8000/v1', "
        "CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 97 = 0 THEN 'cancelled' "
        "ELSE 'complete' END, "
        "CASE WHEN i % 50 = 0 THEN (ARRAY['llm_timeout', 'llm_error', 'interrupted'])[1 + i % 3] "
        "WHEN i % 97 = 0 THEN 'cancelled' END, NULL, "
        "100 + i % 400, 20 + i % 300, 40 + (i % 997) * 0.5, 200 + (i % 4999) * 1.7, "
        f"'{start.isoformat()}'::timestamptz + (i - {first}) * interval '{step} seconds', "
        f"'{start.isoformat()}'::timestamptz + (i - {first}) * interval '{step} seconds' "
        f"FROM generate_series({first}, {first + rows - 1}) i"
    )


LEDGER_REPORT = (
    "SELECT owner_key, count(*), sum(prompt_tokens), sum(completion_tokens), "
    "count(*) FILTER (WHERE status = 'failed'), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE status = 'complete'), "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE status = 'complete') "
    "FROM usage_ledger WHERE asked_at >= $1 AND asked_at < $2 GROUP BY owner_key"
)


async def timed(label: str, work: object, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        await work()  # type: ignore[operator]
        best = min(best, time.perf_counter() - began)
    print(f"  {label:58} {best * 1000:10.1f} ms")
    return best


async def main(rows: int, writes: int) -> None:
    url = await create_postgres_database("switchboard_bench_usage")
    try:
        settings = Settings(database_url=url)
        await migrate(engine_from_url(url))
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("ALTER TABLE usage_ledger DISABLE TRIGGER usage_ledger_rollup")
            began = time.perf_counter()
            await connection.execute(generate(rows, START))
            await connection.execute(made._fill(postgres=True))
            await connection.execute("ALTER TABLE usage_ledger ENABLE TRIGGER usage_ledger_rollup")
            await connection.execute("VACUUM ANALYZE usage_ledger")
            await connection.execute("VACUUM ANALYZE usage_rollup")
            rolled = await connection.fetchval("SELECT count(*) FROM usage_rollup")
            print(
                f"{rows:,} ledger rows over {DAYS} days generated and rolled up in "
                f"{time.perf_counter() - began:.0f} s: {rolled:,} rollup rows"
            )
            month = (START, START + timedelta(days=DAYS))
            print("GET /v1/usage for the month (usage_totals: rollup + merge + percentiles):")
            async with open_runtime(settings, use_llm=False):
                for group_by in ([], ["key"], ["config_version", "model"], ["day"], ["hour"]):
                    since, until = month
                    if "hour" in group_by:
                        until = since + timedelta(days=31)
                    await timed(
                        f"group_by={','.join(group_by) or '(none)'}",
                        lambda g=group_by, s=since, u=until: usage_totals(  # type: ignore[misc]
                            since=s, until=u, group_by=g
                        ),
                    )
                owner = "00000000-0000-4000-8000-000000000007"
                await timed(
                    "one chat key's own, by day",
                    lambda: usage_totals(
                        since=month[0], until=month[1], group_by=["day"], owner=uuid.UUID(owner)
                    ),
                )
            print("The same month read from the ledger instead (by key, percentile_cont):")
            await connection.execute("SET statement_timeout = '300s'")
            ledger = await timed(
                "ledger by key", lambda: connection.fetch(LEDGER_REPORT, *month), repeat=1
            )
            rollup = await timed(
                "rollup by key",
                lambda: connection.fetch(
                    "SELECT owner_key, sum(requests) FROM usage_rollup "
                    "WHERE hour >= $1 AND hour < $2 GROUP BY owner_key",
                    *month,
                ),
            )
            print(f"  ledger / rollup: {ledger / rollup:,.0f}x")

            print(f"The trigger on the write path ({writes:,} ledger rows, one statement):")
            later = START + timedelta(days=DAYS + 1)
            costs = {}
            for state in ("DISABLE", "ENABLE", "DISABLE", "ENABLE"):
                await connection.execute(
                    f"ALTER TABLE usage_ledger {state} TRIGGER usage_ledger_rollup"
                )
                first = rows + 1 + len(costs) * writes
                began = time.perf_counter()
                await connection.execute(generate(writes, later, first=first))
                spent = (time.perf_counter() - began) / writes * 1e6
                costs[f"{state}-{len(costs)}"] = spent
                print(f"  trigger {state.lower()}d: {spent:8.1f} µs per ledger row")
            off = min(v for k, v in costs.items() if k.startswith("DISABLE"))
            on = min(v for k, v in costs.items() if k.startswith("ENABLE"))
            print(f"  added by the rollup: {on - off:.1f} µs of PostgreSQL CPU per exchange")
        finally:
            await connection.close()
    finally:
        await drop_postgres_database(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--writes", type=int, default=50_000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rows, arguments.writes))
