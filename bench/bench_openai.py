"""The OpenAI door's cost against the simulator called directly, measured in one run.

Starts the vLLM simulator, a fresh PostgreSQL database and the gateway (one worker, pinned
to one core), then drives both with closed-loop clients on the other core:

  A. simulator directly, non-streamed, N connections
  B. the door, non-streamed, N connections: every exchange stored and threaded; each
     connection is one chat that resends its whole, growing history (10 to 40 turns) every
     turn, so each request pays the thread lookup and appends to its conversation
  C. the same at one connection: added p50 latency
  D. one connection, streamed (32 chunks): added time to first token, and the gateway's
     CPU per relayed chunk
  E. the door, streamed, N connections: CPU per relayed chunk under load
  F. Responses (``/v1/responses``), non-streamed, N connections: each connection a chain of
     10 turns, each sent with ``previous_response_id`` at once after the last completed
     (the history read from the store, never resent), then a new chain
  G. the same, streamed (Responses events)

and the chain lookup's CPU (``previous_response_id`` to its reply and conversation), in
this process against the same database, for a response at turn 1 and at turn 10 of a
chain: an index lookup costs the same whatever the chain's length.

It reports requests/s, p50/p99, the gateway's CPU per request (and per chunk) and its RSS.

    scripts/with-postgres.sh .venv/bin/python -m bench.bench_openai

Traffic goes to 127.0.0.1 only and every phase stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from typing import Any

import aiohttp

from bench.bench_gateway import CpuMeter
from functions.core.db.engine import close_pool, engine_from_url, open_pool, use_engine
from functions.core.db.migrate import migrate
from functions.core.db.sql import fetch
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.responses import service as responses
from functions.openai.ids import IdKind, parse_id
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess

TOKENS = 32
FIRST_TURNS, LAST_TURNS = 10, 40


def _pct(values: list[float], pct: int) -> float | None:
    if len(values) < 2:
        return round(values[0], 3) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 3)


def _seed_history(chat: int) -> list[dict[str, str]]:
    history = []
    for turn in range(FIRST_TURNS // 2):
        history.append({"role": "user", "content": f"chat {chat} question {turn}: tell me more"})
        history.append({"role": "assistant", "content": f"answer {turn} of chat {chat}"})
    return history


async def _chat_loop(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    chat: int,
    stream: bool,
    until: float,
    out: dict[str, list[float]],
) -> None:
    """One connection: a chat resent in full every turn; restarts at LAST_TURNS."""
    epoch = 0
    history = _seed_history(chat * 1000 + epoch)
    while time.monotonic() < until:
        turn = len(history) // 2
        history.append({"role": "user", "content": f"chat {chat} question {turn}: go on"})
        body: dict[str, Any] = {"model": model, "messages": history, "max_tokens": TOKENS}
        if stream:
            body["stream"] = True
        started = time.monotonic()
        first_token: float | None = None
        text = []
        async with session.post(url, json=body) as response:
            if response.status != 200:
                out["errors"].append(response.status)
                await response.read()
                history.pop()
                continue
            if stream:
                async for line in response.content:
                    if line.startswith(b"data: {") and b'"content":"' in line:
                        if first_token is None:
                            first_token = time.monotonic()
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices") or ():
                            text.append(choice["delta"].get("content") or "")
                        out["chunks"].append(1)
            else:
                answer = await response.json()
                text.append(answer["choices"][0]["message"]["content"] or "")
        ended = time.monotonic()
        out["latency"].append((ended - started) * 1000)
        if first_token is not None:
            out["ttft"].append((first_token - started) * 1000)
        history.append({"role": "assistant", "content": "".join(text)})
        if len(history) >= LAST_TURNS:
            epoch += 1
            history = _seed_history(chat * 1000 + epoch)


CHAIN_TURNS = 10


async def _responses_loop(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    chat: int,
    stream: bool,
    until: float,
    out: dict[str, list[Any]],
) -> None:
    """One connection: chains of CHAIN_TURNS responses, each continuing the last by
    ``previous_response_id`` as soon as it completed."""
    previous: str | None = None
    turn = 0
    while time.monotonic() < until:
        body: dict[str, Any] = {
            "model": model,
            "input": f"chat {chat} question {turn}: go on",
            "max_output_tokens": TOKENS,
        }
        if previous is not None:
            body["previous_response_id"] = previous
        if stream:
            body["stream"] = True
        started = time.monotonic()
        first_token: float | None = None
        async with session.post(url, json=body) as response:
            if response.status != 200:
                out["errors"].append(response.status)
                await response.read()
                continue
            if stream:
                async for line in response.content:
                    if not line.startswith(b"data: {"):
                        continue
                    if b'"response.output_text.delta"' in line:
                        if first_token is None:
                            first_token = time.monotonic()
                        out["chunks"].append(1)
                    elif b'"response.completed"' in line or b'"response.incomplete"' in line:
                        answer = json.loads(line[6:])["response"]
            else:
                answer = await response.json()
        ended = time.monotonic()
        out["latency"].append((ended - started) * 1000)
        if first_token is not None:
            out["ttft"].append((first_token - started) * 1000)
        turn += 1
        previous = answer["id"]
        if turn == 1 or turn == CHAIN_TURNS:
            out["ids"].append((turn, answer["id"]))
        if turn >= CHAIN_TURNS:
            previous, turn = None, 0


async def _run(
    url: str, model: str, headers: dict[str, str], connections: int, stream: bool, seconds: float
) -> dict[str, Any]:
    out: dict[str, list[Any]] = {"latency": [], "ttft": [], "errors": [], "chunks": [], "ids": []}
    loop = _responses_loop if url.endswith("/responses") else _chat_loop
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        until = time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(
            *(
                loop(session, url, model, os.getpid() * 100 + i, stream, until, out)
                for i in range(connections)
            )
        )
        elapsed = time.monotonic() - started
    return {
        "requests": len(out["latency"]),
        "errors": len(out["errors"]),
        "chunks": len(out["chunks"]),
        "rps": round(len(out["latency"]) / elapsed, 1),
        "p50_ms": _pct(out["latency"], 50),
        "p99_ms": _pct(out["latency"], 99),
        "ttft_p50_ms": _pct(out["ttft"], 50),
        "ids": out["ids"][:400],
    }


def _child(conn: Any, core: int, args: tuple[Any, ...]) -> None:
    os.sched_setaffinity(0, {core})
    conn.send(asyncio.run(_run(*args)))


def drive(core: int, *args: Any) -> dict[str, Any]:
    """Run a phase in a process of its own, pinned to ``core``."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, core, args))
    process.start()
    result: dict[str, Any] = parent.recv()
    process.join()
    return result


async def lookup_cpu_ms(database_url: str, ids: list[tuple[int, str]]) -> dict[int, float | None]:
    """CPU per ``previous_response_id`` lookup (this process's, asyncpg's encoding and
    decoding included), for responses at turn 1 and at turn CHAIN_TURNS of a chain."""
    engine = engine_from_url(database_url)
    use_engine(engine)
    await open_pool(engine, min_size=1, max_size=1)
    rows = await fetch("SELECT owner_key FROM conversation LIMIT 1")
    owner = rows[0]["owner_key"]
    chosen = {
        turn: [parse_id(IdKind.RESPONSE, i) for t, i in ids if t == turn][:10]
        for turn in (1, CHAIN_TURNS)
    }
    spent = dict.fromkeys([*chosen, 0], 0.0)
    rounds = 300
    try:
        for replies in chosen.values():  # warm: statements prepared, pool connected
            for reply_id in replies:
                assert await responses.previous_of(owner, reply_id) is not None
        # Interleaved, so drift on a loaded machine falls on all alike; 0 is the baseline:
        # the same number of ``SELECT 1`` through the same path (pool, asyncpg, rows).
        for _ in range(rounds):
            for turn, replies in chosen.items():
                started = time.process_time()
                for reply_id in replies:
                    await responses.previous_of(owner, reply_id)
                spent[turn] += time.process_time() - started
            started = time.process_time()
            for _ in range(len(chosen[1])):
                await fetch("SELECT 1 AS one")
            spent[0] += time.process_time() - started
    finally:
        await close_pool(engine)
    counts = {0: len(chosen[1]), **{turn: len(replies) for turn, replies in chosen.items()}}
    # A phase too slow (a loaded machine) to reach turn CHAIN_TURNS leaves nothing to time.
    return {
        turn: spent[turn] * 1000 / (rounds * counts[turn]) if counts[turn] else None
        for turn in spent
    }


async def prepare(database_url: str) -> str:
    engine = engine_from_url(database_url)
    use_engine(engine)
    await migrate(engine)
    return (await keys.create_key(ApiKeyCreate(name="bench"))).secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    gateway_core, other_core = cores[0], cores[-1]
    database_url = asyncio.run(create_postgres_database("switchboard_bench_openai"))
    sim = SimulatorProcess("--tokens", str(TOKENS), "--log-level", "WARNING").start()
    gateway = GatewayProcess(database_url, [sim.base_url], env={"SWITCHBOARD_LOG_LEVEL": "INFO"})
    try:
        secret = asyncio.run(prepare(database_url))
        gateway.start()
        assert sim.pid
        assert gateway.pid
        os.sched_setaffinity(gateway.pid, {gateway_core})
        os.sched_setaffinity(sim.pid, {other_core})
        meter = CpuMeter(gateway.pid)
        auth = {"Authorization": f"Bearer {secret}"}
        direct = f"{sim.base_url}/chat/completions"
        door = f"{gateway.root_url}/v1/chat/completions"
        responses_url = f"{gateway.root_url}/v1/responses"
        n, seconds = args.connections, args.duration

        def measured(url: str, headers: dict[str, str], conns: int, stream: bool) -> dict[str, Any]:
            before = meter.cpu_s()
            result = drive(other_core, url, "sim-model", headers, conns, stream, seconds)
            used_ms = (meter.cpu_s() - before) * 1000
            result["cpu_ms_per_request"] = round(used_ms / max(result["requests"], 1), 3)
            if result["chunks"]:
                result["cpu_ms_per_chunk"] = round(used_ms / result["chunks"], 4)
            return result

        drive(other_core, door, "sim-model", auth, 4, False, 2.0)  # warm up
        drive(other_core, responses_url, "sim-model", auth, 4, False, 2.0)
        rss_before = meter.rss_mb()
        rows = {
            "A direct": drive(other_core, direct, "sim-model", {}, n, False, seconds),
            "B door (stored, threaded)": measured(door, auth, n, False),
            "C direct, 1 conn": drive(other_core, direct, "sim-model", {}, 1, False, seconds),
            "C door, 1 conn": measured(door, auth, 1, False),
            "D direct stream, 1 conn": drive(other_core, direct, "sim-model", {}, 1, True, seconds),
            "D door stream, 1 conn": measured(door, auth, 1, True),
            "E direct stream": drive(other_core, direct, "sim-model", {}, n, True, seconds),
            "E door stream": measured(door, auth, n, True),
            "F responses chain": measured(responses_url, auth, n, False),
            "G responses chain stream": measured(responses_url, auth, n, True),
        }
        lookup = asyncio.run(lookup_cpu_ms(database_url, rows["F responses chain"]["ids"]))
        rss_after = meter.rss_mb()
    finally:
        gateway.close()
        sim.close()
        asyncio.run(drop_postgres_database(database_url))

    print(
        f"\nOpenAI door benchmark ({n} connections, {seconds:.0f}s phases, {TOKENS}-token "
        f"replies, histories of {FIRST_TURNS}-{LAST_TURNS} turns resent in full, gateway on "
        "1 core, PostgreSQL)\n"
    )
    print(
        f"{'phase':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'TTFT p50':>9} "
        f"{'CPU ms/req':>11} {'CPU ms/chunk':>13} {'errors':>7}"
    )
    for name, row in rows.items():
        print(
            f"{name:28} {row['rps']:>8} {row['p50_ms']!s:>8} {row['p99_ms']!s:>8} "
            f"{row['ttft_p50_ms']!s:>9} {row.get('cpu_ms_per_request', '')!s:>11} "
            f"{row.get('cpu_ms_per_chunk', '')!s:>13} {row['errors']:>7}"
        )
    added = (rows["C door, 1 conn"]["p50_ms"] or 0) - (rows["C direct, 1 conn"]["p50_ms"] or 0)
    added_ttft = (rows["D door stream, 1 conn"]["ttft_p50_ms"] or 0) - (
        rows["D direct stream, 1 conn"]["ttft_p50_ms"] or 0
    )
    print(f"\nadded p50, 1 conn: {added:.3f} ms; added TTFT p50, 1 conn: {added_ttft:.3f} ms")
    # What relaying costs per chunk: a streamed request's CPU beyond a non-streamed one's
    # (the same exchange, stored the same way), over the chunks it relayed.
    for streamed, plain in (
        ("E door stream", "B door (stored, threaded)"),
        ("D door stream, 1 conn", "C door, 1 conn"),
    ):
        row = rows[streamed]
        per_request = row["chunks"] / max(row["requests"], 1)
        extra = row["cpu_ms_per_request"] - rows[plain]["cpu_ms_per_request"]
        print(f"CPU per relayed chunk ({streamed}): {extra / max(per_request, 1):.4f} ms")
    print(f"gateway RSS: {rss_before:.1f} MB before, {rss_after:.1f} MB after")
    baseline = lookup.pop(0)
    print(
        "previous_response_id lookup CPU: "
        + ", ".join(
            f"turn {turn}: " + ("not reached" if ms is None else f"{ms:.4f} ms")
            for turn, ms in lookup.items()
        )
        + f" (a SELECT 1 through the same path: {baseline or 0:.4f} ms)"
    )


if __name__ == "__main__":
    main()
