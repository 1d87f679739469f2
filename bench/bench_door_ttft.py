"""The OpenAI door's added time to first token at one connection, and where it goes.

One connection alternates a streamed request to the simulator directly with one through
the door (every exchange stored and threaded: a chat resending its growing 10-40-turn
history), so both see the same machine at the same moment; the added TTFT is the median
of the door's minus the median of the direct ones. On a shared machine a single phase's
median moves with the load, an alternation does not.

Where the added time goes, per door request, from the stored rows: the reply's
``ttft_ms`` is the gateway's own wait for vLLM's first chunk, so the door's TTFT minus it
is the gateway's time before the upstream call (auth, parsing, the thread lookup, the
claim and its commit) plus relaying the first chunk. The database's share is shown by
the same statements timed from here: a round trip (``SELECT 1``) and a one-row write
committed on its own (what the claim's commit waits for), each the median of as many.

    scripts/with-postgres.sh .venv/bin/python -m bench.bench_door_ttft --samples 400

Traffic goes to 127.0.0.1 only; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import aiohttp
import asyncpg

from bench.bench_openai import FIRST_TURNS, LAST_TURNS, TOKENS, _seed_history, prepare
from functions.core.db.engine import close_pool, engine_from_url, open_pool, use_engine
from functions.core.db.sql import fetch
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess


async def _first_token(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[float, str, dict[str, str]]:
    """The time to the first content chunk (ms), the whole text, and the headers."""
    started = time.perf_counter()
    first: float | None = None
    text = []
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content":"' in line:
                if first is None:
                    first = time.perf_counter()
                for choice in json.loads(line[6:]).get("choices") or ():
                    text.append(choice["delta"].get("content") or "")
        assert first is not None
        return (
            (first - started) * 1000,
            "".join(text),
            {k.lower(): v for k, v in response.headers.items()},
        )


async def _database_rtts(url: str, samples: int) -> tuple[float, float]:
    """Median ms of a round trip and of a one-row write committed on its own."""
    connection = await asyncpg.connect(url)
    try:
        # A regular (WAL-logged) table, as the claim's rows are; the database is the run's own.
        await connection.execute("CREATE TABLE bench_commit (id int PRIMARY KEY, seen int)")
        selects, commits = [], []
        for index in range(samples):
            started = time.perf_counter()
            await connection.fetchval("SELECT 1")
            selects.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await connection.execute(
                "INSERT INTO bench_commit VALUES (1, $1) "
                "ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
                index,
            )
            commits.append((time.perf_counter() - started) * 1000)
        return statistics.median(selects), statistics.median(commits)
    finally:
        await connection.close()


async def _run(direct: str, door: str, secret: str, samples: int) -> dict[str, Any]:
    history = _seed_history(0)
    epoch = 0
    direct_ttft, door_ttft, replies = [], [], []
    auth = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for index in range(samples + 20):
            history.append({"role": "user", "content": f"question {len(history)}: go on"})
            body = {"model": "sim-model", "messages": history, "max_tokens": TOKENS}
            streamed = {**body, "stream": True}
            ttft, _, _ = await _first_token(session, direct, streamed, {})
            door_ms, text, headers = await _first_token(session, door, streamed, auth)
            history.append({"role": "assistant", "content": text})
            if index >= 20:  # warmed up
                direct_ttft.append(ttft)
                door_ttft.append(door_ms)
                replies.append((headers["x-switchboard-reply-id"], door_ms))
            if len(history) >= LAST_TURNS:
                epoch += 1
                history = _seed_history(epoch)
    return {"direct": direct_ttft, "door": door_ttft, "replies": replies}


async def _stored_ttft(database_url: str, reply_ids: list[str]) -> list[float]:
    engine = engine_from_url(database_url)
    await open_pool(engine, min_size=1, max_size=2)
    use_engine(engine)
    try:
        rows = await fetch("SELECT id, ttft_ms FROM message WHERE role = 'assistant'")
        by_id = {str(row["id"]): row["ttft_ms"] for row in rows}
        return [float(by_id[reply]) for reply in reply_ids if by_id.get(reply) is not None]
    finally:
        await close_pool(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    gateway_core, other_core = cores[0], cores[-1]
    database_url = asyncio.run(create_postgres_database("switchboard_bench_ttft"))
    sim = SimulatorProcess("--tokens", str(TOKENS), "--log-level", "WARNING").start()
    gateway = GatewayProcess(database_url, [sim.base_url], env={"SWITCHBOARD_LOG_LEVEL": "INFO"})
    try:
        secret = asyncio.run(prepare(database_url))
        gateway.start()
        assert sim.pid
        assert gateway.pid
        os.sched_setaffinity(gateway.pid, {gateway_core})
        os.sched_setaffinity(sim.pid, {other_core})
        os.sched_setaffinity(0, {other_core})
        result = asyncio.run(
            _run(
                f"{sim.base_url}/chat/completions",
                f"{gateway.root_url}/v1/chat/completions",
                secret,
                args.samples,
            )
        )
        stored = asyncio.run(_stored_ttft(database_url, [r for r, _ in result["replies"]]))
        select_ms, commit_ms = asyncio.run(_database_rtts(database_url, args.samples))
    finally:
        gateway.close()
        sim.close()
        asyncio.run(drop_postgres_database(database_url))

    direct = statistics.median(result["direct"])
    door = statistics.median(result["door"])
    before_call = statistics.median(
        door_ms - upstream
        for (_, door_ms), upstream in zip(result["replies"], stored, strict=False)
    )
    print(
        f"\nOpenAI door, added time to first token at one connection ({args.samples} "
        f"alternating samples, {TOKENS}-token streams, histories of {FIRST_TURNS}-{LAST_TURNS} "
        "turns resent in full, gateway on 1 core, PostgreSQL)\n"
    )
    print(f"TTFT p50, simulator directly:   {direct:8.3f} ms")
    print(f"TTFT p50, through the door:     {door:8.3f} ms  ({door / direct:.2f}x)")
    print(f"added TTFT p50:                 {door - direct:8.3f} ms")
    print(f"gateway's upstream TTFT p50:    {statistics.median(stored):8.3f} ms (stored ttft_ms)")
    print(f"door TTFT - upstream TTFT p50:  {before_call:8.3f} ms (before the call + relay)")
    print(f"database round trip p50:        {select_ms:8.3f} ms (SELECT 1)")
    print(f"database commit p50:            {commit_ms:8.3f} ms (one-row upsert, autocommit)")


if __name__ == "__main__":
    main()
