"""Gateway overhead against a direct call to the upstream, measured in one run.

Starts the vLLM simulator, a fresh PostgreSQL database and the gateway (one worker,
``switchboard serve``), then drives both with the same closed-loop load generator:

  A. simulator directly, non-streaming, N connections
  B. gateway: non-streaming sends, every exchange stored in PostgreSQL, N connections
  C. one connection, non-streaming: gateway p50 vs direct p50 (added latency)
  D. one connection, streaming: time to first byte and to first token, gateway vs direct

It reports requests/s, p50/p99, the gateway's CPU time per request and its RSS (from
/proc via psutil, before and after), with ratios against the direct run.

    make bench            # or: scripts/with-postgres.sh .venv/bin/python -m bench.bench_gateway

Traffic goes to 127.0.0.1 only and every phase stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import run_load, run_wrk, wrk_available
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.migrate import migrate
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess

RESULTS = Path(__file__).parent / "results"
PROMPT = "Say hello to the benchmark, 안녕하세요 🚀"
TOKENS = 16


def _ascii_json(value: Any) -> bytes:
    # json's ASCII escapes keep bodies safe inside a wrk Lua script.
    return json.dumps(value).encode()


def direct_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": TOKENS,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return _ascii_json(body)


def gateway_body(stream: bool) -> bytes:
    return _ascii_json({"content": PROMPT, "stream": stream})


async def prepare(database_url: str, conversations_count: int) -> tuple[str, list[str]]:
    engine = engine_from_url(database_url)
    use_engine(engine)
    await migrate(engine)
    secret = (await keys.create_key(ApiKeyCreate(name="bench"))).secret
    await configs.create_config(
        LLMConfigCreate(
            name="bench", model="sim-model", max_tokens=TOKENS, history_window=2, is_default=True
        )
    )
    principal = await keys.authenticate(secret)
    ids = [
        str((await conversations.create_conversation(principal.key_id, ConversationCreate())).id)
        for _ in range(conversations_count)
    ]
    return secret, ids


class CpuMeter:
    """CPU seconds and RSS of one process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20


def measured(meter: CpuMeter, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``load`` and add the gateway's CPU milliseconds per request to its summary."""
    before = meter.cpu_s()
    result = load()
    used_ms = (meter.cpu_s() - before) * 1000
    return result | {"cpu_ms_per_request": round(used_ms / max(result["requests"], 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--conversations",
        type=int,
        default=256,
        help="conversations the sends rotate over (more than connections)",
    )
    parser.add_argument("--single", type=int, default=400, help="requests in the stream phase")
    parser.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    args = parser.parse_args()
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and wrk_available())

    cores = sorted(os.sched_getaffinity(0))
    gateway_core, other_core = cores[0], cores[-1]
    database_url = asyncio.run(create_postgres_database("switchboard_bench"))
    sim = SimulatorProcess("--tokens", str(TOKENS), "--log-level", "WARNING").start()
    gateway = GatewayProcess(database_url, [sim.base_url], env={"SWITCHBOARD_LOG_LEVEL": "INFO"})
    try:
        secret, conversation_ids = asyncio.run(prepare(database_url, args.conversations))
        gateway.start()
        assert sim.pid
        assert gateway.pid
        os.sched_setaffinity(gateway.pid, {gateway_core})
        os.sched_setaffinity(sim.pid, {other_core})
        meter = CpuMeter(gateway.pid)
        auth = {"Authorization": f"Bearer {secret}"}
        direct_url = f"{sim.base_url}/chat/completions"
        send_urls = [
            f"{gateway.root_url}/v1/conversations/{cid}/messages" for cid in conversation_ids
        ]

        def load(
            urls: list[str], body: bytes, connections: int, headers: dict[str, str] | None = None
        ) -> dict[str, Any]:
            if use_wrk:
                return run_wrk(
                    urls,
                    body,
                    connections=connections,
                    headers=headers,
                    duration_s=args.duration,
                    cores=[other_core],
                )
            # The aiohttp generator keeps one URL per connection.
            per_connection = [urls[i % len(urls)] for i in range(connections)]
            return run_load(
                per_connection, body, headers=headers, duration_s=args.duration, core=other_core
            ).summary()

        def stream(urls: list[str], body: bytes, marker: bytes, **kw: Any) -> dict[str, Any]:
            return run_load(
                urls,
                body,
                duration_s=120,
                max_requests=args.single,
                stream_marker=marker,
                core=other_core,
                **kw,
            ).summary()

        # Warm up both paths (pools, prepared statements, the auth cache).
        run_load([direct_url] * 4, direct_body(False), duration_s=1.0, core=other_core)
        run_load(send_urls[:4], gateway_body(False), headers=auth, duration_s=2.0, core=other_core)

        rss_before = meter.rss_mb()
        a = load([direct_url], direct_body(False), args.connections)
        b = measured(meter, lambda: load(send_urls, gateway_body(False), args.connections, auth))
        c_direct = load([direct_url], direct_body(False), 1)
        c_gateway = measured(meter, lambda: load(send_urls, gateway_body(False), 1, auth))
        d_direct = stream([direct_url], direct_body(True), b'"content":"')
        d_gateway = stream(send_urls[:1], gateway_body(True), b"event: delta", headers=auth)
        rss_after = meter.rss_mb()
    finally:
        gateway.close()
        sim.close()
        asyncio.run(drop_postgres_database(database_url))

    added_p50 = c_gateway["p50_ms"] - c_direct["p50_ms"]
    added_ttft = d_gateway["first_token_p50_ms"] - d_direct["first_token_p50_ms"]
    report = {
        "machine": {"cpus": len(cores), "python": sys.version.split()[0]},
        "settings": {
            "connections": args.connections,
            "duration_s": args.duration,
            "tokens": TOKENS,
            "conversations": args.conversations,
            "generator": "wrk" if use_wrk else "aiohttp",
        },
        "A_direct": a,
        "B_gateway": b,
        "C_direct_1conn": c_direct,
        "C_gateway_1conn": c_gateway,
        "D_direct_stream": d_direct,
        "D_gateway_stream": d_gateway,
        "gateway_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "derived": {
            "throughput_ratio_gateway_vs_direct": round(b["rps"] / a["rps"], 3),
            "added_p50_ms_1conn": round(added_p50, 3),
            "added_first_token_p50_ms_1conn": round(added_ttft, 3),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"gateway-{stamp}.json").write_text(json.dumps(report, indent=2))

    print(
        f"\nGateway benchmark ({args.connections} connections, {args.duration:.0f}s phases, "
        f"{TOKENS}-token replies, gateway on 1 core, PostgreSQL persistence, "
        f"{report['settings']['generator']})\n"
    )
    print(f"{'phase':34} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms/req':>11}")
    for name, result in (
        ("A simulator direct", a),
        ("B gateway send (stored)", b),
        ("C simulator direct, 1 conn", c_direct),
        ("C gateway send, 1 conn", c_gateway),
    ):
        cpu = result.get("cpu_ms_per_request", "")
        errors = f"   errors={result['errors']}" if result["errors"] else ""
        print(
            f"{name:34} {result['rps']:>9} {result['p50_ms']!s:>9} {result['p99_ms']!s:>9} "
            f"{cpu!s:>11}{errors}"
        )
    print(f"\nthroughput gateway/direct: {b['rps'] / a['rps']:.3f}")
    print(f"added p50 latency, 1 conn: {added_p50:.3f} ms")
    print(
        f"stream first byte p50: direct {d_direct['first_byte_p50_ms']} ms, "
        f"gateway {d_gateway['first_byte_p50_ms']} ms"
    )
    print(
        f"stream first token p50: direct {d_direct['first_token_p50_ms']} ms, gateway "
        f"{d_gateway['first_token_p50_ms']} ms (added {added_ttft:.3f} ms)"
    )
    print(f"gateway RSS: {rss_before:.1f} MB before, {rss_after:.1f} MB after")


if __name__ == "__main__":
    main()
