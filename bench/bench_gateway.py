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
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil

from bench.loadgen import run_load, run_wrk, wrk_available
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.process import REPO_ROOT
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


def _cli(target: Target, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", target.cli, *args],
        cwd=target.code,
        env={**os.environ, "PYTHONPATH": str(target.code), **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


def prepare(target: Target, gateway: GatewayProcess, conversations_count: int) -> Prepared:
    """A key, the default configuration and conversations, made through the target's own
    CLI and API (so an older checkout, with its own schema, is prepared the same way)."""
    env = {"SWITCHBOARD_DATABASE_URL": gateway.env["SWITCHBOARD_DATABASE_URL"]}
    _cli(target, env, "db", "migrate")
    secret = json.loads(
        _cli(target, env, "keys", "create", "--name", "bench", "--admin", "--json")
    )["secret"]
    gateway.start()
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=gateway.root_url, headers=headers, timeout=60) as client:
        created = client.post(
            "/v1/configs",
            json={
                "name": "bench",
                "model": "sim-model",
                "max_tokens": TOKENS,
                "history_window": 2,
                "is_default": True,
            },
        )
        assert created.status_code in (200, 201), created.text
        ids = [
            client.post("/v1/conversations", json={"title": "bench"}).json()["id"]
            for _ in range(conversations_count)
        ]
    return Prepared(secret=secret, conversation_ids=ids)


class Target(NamedTuple):
    """A checkout to measure: this one, or an earlier commit's (``--against``)."""

    name: str
    code: Path
    cli: str


class Prepared(NamedTuple):
    secret: str
    conversation_ids: list[str]


class CpuMeter:
    """CPU seconds and RSS of one process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20


class BackendMeter:
    """CPU seconds of the PostgreSQL backends serving one database (its server's
    processes titled ``postgres: <user> <database> ...``), read from /proc: the share of
    each exchange the database spends, beside the gateway's own."""

    def __init__(self, database: str) -> None:
        self._marker = f" {database} "

    def _backends(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for process in psutil.process_iter(["cmdline"]):
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("postgres:") and self._marker in title:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    found[process.pid] = float(times.user + times.system)
        return found

    def start(self) -> dict[int, float]:
        return self._backends()

    def used_s(self, started: dict[int, float]) -> float:
        return sum(cpu - started.get(pid, 0.0) for pid, cpu in self._backends().items())


def measured(
    meter: CpuMeter, backends: BackendMeter, load: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``load``; add the gateway's and PostgreSQL's CPU milliseconds per request."""
    before, database_before = meter.cpu_s(), backends.start()
    result = load()
    used_ms = (meter.cpu_s() - before) * 1000
    database_ms = backends.used_s(database_before) * 1000
    requests = max(result["requests"], 1)
    return result | {
        "cpu_ms_per_request": round(used_ms / requests, 3),
        "db_cpu_ms_per_request": round(database_ms / requests, 3),
    }


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1].split("?", 1)[0]


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
    parser.add_argument(
        "--against",
        type=Path,
        help="another checkout to measure in the same run (git worktree add DIR COMMIT)",
    )
    parser.add_argument(
        "--against-cli", default="functions.cli", help="its CLI module (older: functions.core.cli)"
    )
    args = parser.parse_args()
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and wrk_available())
    targets = [Target("this", REPO_ROOT, "functions.cli")]
    if args.against is not None:
        targets.append(Target("against", args.against.resolve(), args.against_cli))

    cores = sorted(os.sched_getaffinity(0))
    gateway_core, other_core = cores[0], cores[-1]
    sim = SimulatorProcess("--tokens", str(TOKENS), "--log-level", "WARNING").start()
    assert sim.pid
    os.sched_setaffinity(sim.pid, {other_core})
    direct_url = f"{sim.base_url}/chat/completions"

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

    def measure(target: Target) -> dict[str, Any]:
        database_url = asyncio.run(create_postgres_database("switchboard_bench"))
        gateway = GatewayProcess(
            database_url,
            [sim.base_url],
            env={"SWITCHBOARD_LOG_LEVEL": "INFO"},
            code=target.code,
            cli=target.cli,
        )
        try:
            prepared = prepare(target, gateway, args.conversations)
            assert gateway.pid
            os.sched_setaffinity(gateway.pid, {gateway_core})
            meter = CpuMeter(gateway.pid)
            backends = BackendMeter(_database_name(database_url))
            auth = {"Authorization": f"Bearer {prepared.secret}"}
            send_urls = [
                f"{gateway.root_url}/v1/conversations/{cid}/messages"
                for cid in prepared.conversation_ids
            ]
            # Warm up (pools, prepared statements, the auth cache).
            run_load(
                send_urls[:4], gateway_body(False), headers=auth, duration_s=2.0, core=other_core
            )
            rss_before = meter.rss_mb()
            b = measured(
                meter,
                backends,
                lambda: load(send_urls, gateway_body(False), args.connections, auth),
            )
            c = measured(meter, backends, lambda: load(send_urls, gateway_body(False), 1, auth))
            d = measured(
                meter,
                backends,
                lambda: stream(send_urls[:1], gateway_body(True), b"event: delta", headers=auth),
            )
            rss_after = meter.rss_mb()
        finally:
            gateway.close()
            asyncio.run(drop_postgres_database(database_url))
        return {
            "code": str(target.code),
            "B_gateway": b,
            "C_gateway_1conn": c,
            "D_gateway_stream": d,
            "gateway_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        }

    try:
        # Warm up the simulator.
        run_load([direct_url] * 4, direct_body(False), duration_s=1.0, core=other_core)
        a = load([direct_url], direct_body(False), args.connections)
        c_direct = load([direct_url], direct_body(False), 1)
        d_direct = stream([direct_url], direct_body(True), b'"content":"')
        measured_targets = {target.name: measure(target) for target in targets}
    finally:
        sim.close()

    report: dict[str, Any] = {
        "machine": {"cpus": len(cores), "python": sys.version.split()[0]},
        "settings": {
            "connections": args.connections,
            "duration_s": args.duration,
            "tokens": TOKENS,
            "conversations": args.conversations,
            "generator": "wrk" if use_wrk else "aiohttp",
        },
        "A_direct": a,
        "C_direct_1conn": c_direct,
        "D_direct_stream": d_direct,
        **measured_targets,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"gateway-{stamp}.json").write_text(json.dumps(report, indent=2))

    print(
        f"\nGateway benchmark ({args.connections} connections, {args.duration:.0f}s phases, "
        f"{TOKENS}-token replies, gateway on 1 core, PostgreSQL persistence, "
        f"{report['settings']['generator']})\n"
    )
    header = f"{'phase':40} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms/req':>11}"
    print(f"{header} {'DB CPU ms/req':>14}")
    rows: list[tuple[str, dict[str, Any]]] = [
        ("A simulator direct", a),
        ("C simulator direct, 1 conn", c_direct),
    ]
    for name, result in measured_targets.items():
        rows += [
            (f"B gateway send (stored) [{name}]", result["B_gateway"]),
            (f"C gateway send, 1 conn [{name}]", result["C_gateway_1conn"]),
            (f"D gateway stream, 1 conn [{name}]", result["D_gateway_stream"]),
        ]
    for name, result in rows:
        cpu = result.get("cpu_ms_per_request", "")
        database = result.get("db_cpu_ms_per_request", "")
        errors = f"   errors={result['errors']}" if result["errors"] else ""
        print(
            f"{name:40} {result['rps']:>9} {result['p50_ms']!s:>9} {result['p99_ms']!s:>9} "
            f"{cpu!s:>11} {database!s:>14}{errors}"
        )
    for name, result in measured_targets.items():
        b, c, d = result["B_gateway"], result["C_gateway_1conn"], result["D_gateway_stream"]
        print(f"\n[{name}] {result['code']}")
        print(f"  throughput gateway/direct: {b['rps'] / a['rps']:.3f}")
        print(f"  added p50 latency, 1 conn: {c['p50_ms'] - c_direct['p50_ms']:.3f} ms")
        print(
            f"  stream first token p50: direct {d_direct['first_token_p50_ms']} ms, gateway "
            f"{d['first_token_p50_ms']} ms "
            f"(added {d['first_token_p50_ms'] - d_direct['first_token_p50_ms']:.3f} ms)"
        )
        rss = result["gateway_rss_mb"]
        print(f"  gateway RSS: {rss['before']:.1f} MB before, {rss['after']:.1f} MB after")
    if "against" in measured_targets:
        this, base = measured_targets["this"], measured_targets["against"]
        print("\nthis / against (CPU per request; < 1 is cheaper):")
        for phase in ("B_gateway", "C_gateway_1conn", "D_gateway_stream"):
            ours, theirs = this[phase], base[phase]
            ratio = ours["cpu_ms_per_request"] / max(theirs["cpu_ms_per_request"], 1e-9)
            database = ours["db_cpu_ms_per_request"] / max(theirs["db_cpu_ms_per_request"], 1e-9)
            print(f"  {phase:18} gateway {ratio:.3f}   PostgreSQL {database:.3f}")


if __name__ == "__main__":
    main()
