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
from pathlib import Path
from typing import Any

import msgspec
import psutil

from bench.loadgen import LoadResult, run_load
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


def direct_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": TOKENS,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return msgspec.json.encode(body)


def gateway_body(stream: bool) -> bytes:
    return msgspec.json.encode({"content": PROMPT, "stream": stream})


async def prepare(database_url: str, connections: int) -> tuple[str, list[str]]:
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
        for _ in range(connections)
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


def measured(meter: CpuMeter, load: Any) -> tuple[LoadResult, float]:
    before = meter.cpu_s()
    result: LoadResult = load()
    return result, meter.cpu_s() - before


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--single", type=int, default=400, help="requests in the 1-conn phases")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    gateway_core, other_core = cores[0], cores[-1]
    database_url = asyncio.run(create_postgres_database("switchboard_bench"))
    sim = SimulatorProcess("--tokens", str(TOKENS), "--log-level", "WARNING").start()
    gateway = GatewayProcess(database_url, [sim.base_url], env={"SWITCHBOARD_LOG_LEVEL": "INFO"})
    try:
        secret, conversation_ids = asyncio.run(prepare(database_url, args.connections))
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

        def direct(connections: int, stream: bool = False, **kw: Any) -> LoadResult:
            return run_load(
                [direct_url] * connections,
                direct_body(stream),
                core=other_core,
                stream_marker=b'"content":"' if stream else None,
                **kw,
            )

        def through(urls: list[str], stream: bool = False, **kw: Any) -> LoadResult:
            return run_load(
                urls,
                gateway_body(stream),
                headers=auth,
                core=other_core,
                stream_marker=b"event: delta" if stream else None,
                **kw,
            )

        # Warm up both paths (connection pools, prepared statements, JIT-free but cached).
        direct(4, duration_s=1.0)
        through(send_urls[:4], duration_s=2.0)

        rss_before = meter.rss_mb()
        a = direct(args.connections, duration_s=args.duration)
        b, b_cpu = measured(meter, lambda: through(send_urls, duration_s=args.duration))
        c_direct = direct(1, duration_s=60, max_requests=args.single)
        c_gateway, c_cpu = measured(
            meter, lambda: through(send_urls[:1], duration_s=60, max_requests=args.single)
        )
        d_direct = direct(1, stream=True, duration_s=60, max_requests=args.single)
        d_gateway = through(send_urls[1:2], stream=True, duration_s=60, max_requests=args.single)
        rss_after = meter.rss_mb()
    finally:
        gateway.close()
        sim.close()
        asyncio.run(drop_postgres_database(database_url))

    report = {
        "machine": {"cpus": len(cores), "python": sys.version.split()[0]},
        "settings": {
            "connections": args.connections,
            "duration_s": args.duration,
            "tokens": TOKENS,
            "single_requests": args.single,
        },
        "A_direct": a.summary(),
        "B_gateway": b.summary()
        | {"cpu_ms_per_request": round(b_cpu * 1000 / max(b.requests, 1), 3)},
        "C_direct_1conn": c_direct.summary(),
        "C_gateway_1conn": c_gateway.summary()
        | {"cpu_ms_per_request": round(c_cpu * 1000 / max(c_gateway.requests, 1), 3)},
        "D_direct_stream": d_direct.summary(),
        "D_gateway_stream": d_gateway.summary(),
        "gateway_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
    }
    added_p50 = (c_gateway.summary()["p50_ms"] or 0) - (c_direct.summary()["p50_ms"] or 0)
    added_ttft = (d_gateway.summary()["first_token_p50_ms"] or 0) - (
        d_direct.summary()["first_token_p50_ms"] or 0
    )
    report["derived"] = {
        "throughput_ratio_gateway_vs_direct": round(b.rps / a.rps, 3) if a.rps else None,
        "added_p50_ms_1conn": round(added_p50, 3),
        "added_first_token_p50_ms_1conn": round(added_ttft, 3),
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"gateway-{stamp}.json").write_text(json.dumps(report, indent=2))

    print(
        f"\nGateway benchmark ({args.connections} connections, {args.duration:.0f}s phases, "
        f"{TOKENS}-token replies, gateway on 1 core, PostgreSQL persistence)\n"
    )
    print(f"{'phase':34} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for name, result in (
        ("A simulator direct", a),
        ("B gateway send (stored)", b),
        ("C direct, 1 conn", c_direct),
        ("C gateway, 1 conn", c_gateway),
    ):
        s = result.summary()
        print(
            f"{name:34} {s['rps']:>9} {s['p50_ms']!s:>9} {s['p99_ms']!s:>9}"
            + (f"   errors={s['errors']}" if s["errors"] else "")
        )
    print(f"\nthroughput gateway/direct: {ratio(b.rps, a.rps)}")
    print(
        f"gateway CPU per request (B): {report['B_gateway']['cpu_ms_per_request']} ms "
        f"(1 conn: {report['C_gateway_1conn']['cpu_ms_per_request']} ms)"
    )
    print(f"added p50 latency, 1 conn: {added_p50:.3f} ms")
    dd, dg = d_direct.summary(), d_gateway.summary()
    print(
        f"stream first byte p50: direct {dd['first_byte_p50_ms']} ms, "
        f"gateway {dg['first_byte_p50_ms']} ms"
    )
    print(
        f"stream first token p50: direct {dd['first_token_p50_ms']} ms, gateway "
        f"{dg['first_token_p50_ms']} ms (added {added_ttft:.3f} ms)"
    )
    print(f"gateway RSS: {rss_before:.1f} MB before, {rss_after:.1f} MB after")


if __name__ == "__main__":
    main()
