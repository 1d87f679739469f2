"""The numbers of the sizing guide (docs/sizing.md), measured on this machine in one run.

Starts a throwaway PostgreSQL cluster (``pg_stat_statements`` loaded, ``track_functions =
all``), a PgBouncer in transaction mode in front of it, the simulator and one gateway
replica (``switchboard serve``, one worker, pinned to one core), and measures, first
directly and then through PgBouncer (``SWITCHBOARD_DATABASE_POOL_MODE=transaction``):

- per exchange, stored (non-streamed and streamed sends): PostgreSQL transactions
  committed and rolled back (``pg_stat_database``), statements executed
  (``pg_stat_statements``, with the heaviest listed), round trips and protocol messages
  (a counting proxy between the gateway and its database: each ``Sync``, ``Flush`` or
  simple ``Query`` is one round trip), rows written, and the CPU of the database's backends;
  the gateway's own background work (lease renewals, sweeps), measured while idle, is
  subtracted;
- throughput at 32 connections (no proxy): sends/s, the gateway's CPU per send and so
  sends/s per core, PostgreSQL's (and PgBouncer's) CPU per send, and the most
  connections the replica held to PostgreSQL (or to PgBouncer, and PgBouncer to
  PostgreSQL) meanwhile.

    scripts/with-postgres.sh .venv/bin/python -m bench.bench_sizing [--duration 10]

A measurement, not a test: everything runs on 127.0.0.1 and stops by itself. Results are
printed and written to ``bench/results/sizing-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.bench_gateway import (
    RESULTS,
    BackendMeter,
    CpuMeter,
    Target,
    gateway_body,
    prepare,
)
from bench.loadgen import run_load
from tests.support.cluster import PostgresCluster
from tests.support.gateway import GatewayProcess
from tests.support.pgbouncer import PgBouncer
from tests.support.process import HOST, REPO_ROOT
from tests.support.redis import RedisServer
from tests.support.simulator import SimulatorProcess

DATABASE = "switchboard_sizing"
TOKENS = 16
SSL_OR_GSS_REQUEST = {80877103, 80877104}
# Statements per exchange worth naming in the report (the rest are summed).
TOP_STATEMENTS = 12


class StatsCluster(PostgresCluster):
    """A throwaway cluster that counts statements and function calls."""

    def _server_options(self, *, tcp: bool = True) -> str:
        return (
            super()._server_options(tcp=tcp)
            + " -c shared_preload_libraries=pg_stat_statements -c track_functions=all"
            + " -c pg_stat_statements.track=all -c max_connections=300"
        )


class WireCounter:
    """A TCP proxy to PostgreSQL that counts the messages its clients send, by type
    (``Q`` simple query, ``P`` parse, ``B`` bind, ``E`` execute, ``S`` sync, ...)."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self.counts: collections.Counter[str] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            server = await asyncio.start_server(self._handle, HOST, 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        back = asyncio.ensure_future(self._pipe(up_reader, writer))
        try:
            await self._count_and_forward(reader, up_writer)
        finally:
            back.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _count_and_forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buffer = bytearray()
        startup = True  # untyped messages until the startup packet itself
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                buffer += data
                while True:
                    if startup:
                        if len(buffer) < 8:
                            break
                        length = int.from_bytes(buffer[:4], "big")
                        if len(buffer) < length:
                            break
                        code = int.from_bytes(buffer[4:8], "big")
                        del buffer[:length]
                        startup = code in SSL_OR_GSS_REQUEST
                        continue
                    if len(buffer) < 5:
                        break
                    length = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < length + 1:
                        break
                    self.counts[chr(buffer[0])] += 1
                    del buffer[: length + 1]
                await writer.drain()

    def close(self) -> None:
        """Stop, closing every connection still open (their backends end with them)."""

        def stop() -> None:
            for writer in self._writers:
                with contextlib.suppress(Exception):
                    writer.close()
            self._loop.call_later(0.2, self._loop.stop)

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)


async def _fetch(url: str, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    return asyncio.run(_fetch(url, sql))


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


DATABASE_COUNTERS = (
    "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
    "FROM pg_stat_database WHERE datname = current_database()"
)
STATEMENTS = (
    "SELECT query, calls, rows FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
FUNCTIONS = "SELECT funcname, calls FROM pg_stat_user_functions"


def database_counters(url: str) -> dict[str, int]:
    """``pg_stat_database`` for the database, once the backends have reported.

    A backend reports its counts at most once a second and an idle one within ten:
    wait until two reads a little apart agree.
    """
    previous: dict[str, int] | None = None
    deadline = time.monotonic() + 30
    while True:
        current = {k: int(v) for k, v in fetch(url, DATABASE_COUNTERS)[0].items()}
        # Reading commits a transaction of its own: not counted as the gateway's.
        if (
            previous is not None
            and {k: v - (k == "xact_commit") for k, v in current.items()} == previous
        ):
            return previous
        if time.monotonic() > deadline:
            return current
        previous = current
        time.sleep(2.0)


def statements(url: str) -> dict[str, int]:
    return {row["query"]: int(row["calls"]) for row in fetch(url, STATEMENTS)}


def functions(url: str) -> dict[str, int]:
    return {row["funcname"]: int(row["calls"]) for row in fetch(url, FUNCTIONS)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class Counted:
    """Everything counted over one phase: the database's counters, its statements and
    functions, the proxy's messages, its backends' CPU."""

    def __init__(
        self, url: str, proxy: WireCounter, backends: BackendMeter, redis: RedisStats | None
    ) -> None:
        self.url, self.proxy, self.backends, self.redis = url, proxy, backends, redis

    def __enter__(self) -> Counted:
        self.started = time.monotonic()
        # The cumulative statistics first: once they are steady, so are the functions'.
        self.db = database_counters(self.url)
        self.funcs = functions(self.url)
        self.stmts = statements(self.url)
        self.wire = self.proxy.snapshot()
        self.cpu = self.backends.start()
        self.redis_calls = self.redis.calls() if self.redis else {}
        self.redis_cpu = self.redis.cpu_s() if self.redis else 0.0
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.monotonic() - self.started
        self.cpu_s = self.backends.used_s(self.cpu)
        if self.redis is not None:
            self.redis_calls = delta(self.redis.calls(), self.redis_calls)
            self.redis_cpu = self.redis.cpu_s() - self.redis_cpu
        self.wire = delta(self.proxy.snapshot(), self.wire)
        self.stmts = delta(statements(self.url), self.stmts)
        self.db = delta(database_counters(self.url), self.db)
        self.funcs = delta(functions(self.url), self.funcs)
        self.seconds_counted = time.monotonic() - self.started

    def per(self, count: int, idle: Counted | None) -> dict[str, Any]:
        """Per exchange, the idle rate of background work over the same time taken off."""

        def rate(values: dict[str, int], seconds: float) -> dict[str, float]:
            return {k: v / seconds for k, v in values.items()}

        background: dict[str, dict[str, float]] = {"db": {}, "wire": {}, "stmts": {}}
        if idle is not None:
            background = {
                "db": rate(idle.db, idle.seconds_counted),
                "wire": rate(idle.wire, idle.seconds),
                "stmts": rate(idle.stmts, idle.seconds),
            }

        def net(values: dict[str, int], kind: str, seconds: float) -> dict[str, float]:
            keys = set(values) | set(background[kind])
            return {
                k: round((values.get(k, 0) - background[kind].get(k, 0.0) * seconds) / count, 2)
                for k in sorted(keys)
            }

        wire = net(self.wire, "wire", self.seconds)
        stmts = net(self.stmts, "stmts", self.seconds)
        top = sorted(stmts.items(), key=lambda kv: -kv[1])[:TOP_STATEMENTS]
        return {
            "exchanges": count,
            "commits": net(self.db, "db", self.seconds_counted).get("xact_commit", 0.0),
            "rollbacks": net(self.db, "db", self.seconds_counted).get("xact_rollback", 0.0),
            "rows_written": round(
                sum(
                    v
                    for k, v in net(self.db, "db", self.seconds_counted).items()
                    if k.startswith("tup_")
                ),
                2,
            ),
            "statements": round(sum(stmts.values()), 2),
            # A client waits for an answer after each Sync, simple Query and Flush.
            "round_trips": round(sum(wire.get(t, 0.0) for t in "SQH"), 2),
            "messages": wire,
            "functions": {k: round(v / count, 2) for k, v in self.funcs.items()},
            "db_cpu_ms": round(self.cpu_s * 1000 / count, 3),
            "redis_calls": {k: round(v / count, 2) for k, v in self.redis_calls.items()},
            "redis_cpu_ms": round(self.redis_cpu * 1000 / count, 3),
            "top_statements": [
                {"calls": calls, "query": " ".join(q.split())[:160]} for q, calls in top
            ],
        }


class RedisStats:
    """Commands a Redis server ran (``INFO commandstats``: those its scripts ran
    included) and its CPU."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)

    def calls(self) -> dict[str, int]:
        stats = self._client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name not in ("cmdstat_info",)
        }

    def cpu_s(self) -> float:
        cpu = self._client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class PeakConnections:
    """The most backends serving the database (and PgBouncer clients) seen while running."""

    def __init__(self, direct_url: str, bouncer: PgBouncer | None) -> None:
        self._url, self._bouncer = direct_url, bouncer
        self.backends = 0
        self.bouncer_clients = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sql = (
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        while not self._stop.is_set():
            self.backends = max(self.backends, int(fetch(self._url, sql)[0]["n"]))
            if self._bouncer is not None:
                pool = self._bouncer.pool()
                self.bouncer_clients = max(
                    self.bouncer_clients, pool["cl_active"] + pool["cl_waiting"]
                )
            self._stop.wait(0.25)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--counted", type=int, default=300, help="sends per counted phase")
    parser.add_argument("--conversations", type=int, default=256)
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    gateway_core, other_core = cores[0], cores[-1]
    cluster = StatsCluster().start()
    direct = cluster.url(DATABASE)
    asyncio.run(_execute(cluster.url(), f'CREATE DATABASE "{DATABASE}"'))
    asyncio.run(_execute(direct, "CREATE EXTENSION pg_stat_statements"))
    bouncer = PgBouncer(direct, pool_mode="transaction", pool_size=20).start()
    sim = SimulatorProcess("--tokens", str(TOKENS), "--log-level", "WARNING").start()
    assert sim.pid
    os.sched_setaffinity(sim.pid, {other_core})
    target = Target("this", REPO_ROOT, "functions.cli")
    report: dict[str, Any] = {
        "machine": {
            "cpus": len(cores),
            "cpu": _cpu_model(),
            "python": sys.version.split()[0],
            "loadavg_at_start": os.getloadavg(),
        },
        "settings": vars(args) | {"tokens": TOKENS},
    }
    conversations: list[str] = []
    secret = ""
    redis_server = RedisServer().start()
    # Limits no send reaches: every send is checked and counted in Redis, none refused.
    limits = {
        "SWITCHBOARD_RATE_LIMIT_URL": redis_server.url,
        "SWITCHBOARD_LIMIT_DEFAULT_REQUESTS_PER_MINUTE": "100000000",
        "SWITCHBOARD_LIMIT_DEFAULT_TOKENS_PER_MINUTE": "100000000000",
        "SWITCHBOARD_LIMIT_DEFAULT_MAX_CONCURRENT": "100000",
        "SWITCHBOARD_LIMIT_DEFAULT_TOKENS_PER_DAY": "100000000000",
        "SWITCHBOARD_LIMIT_DEFAULT_TOKENS_PER_MONTH": "100000000000",
    }
    pooled = {
        "SWITCHBOARD_DATABASE_POOL_MODE": "transaction",
        "SWITCHBOARD_DATABASE_LISTEN_URL": direct,
    }
    modes = {
        # name: (the database's address, the gateway's settings, whether Redis counts)
        "direct": ((HOST, cluster.port), {}, False),
        "pgbouncer": ((HOST, bouncer.port), pooled, False),
        "limits": ((HOST, cluster.port), limits, True),
    }
    try:
        for mode, (address, settings, counts_redis) in modes.items():
            env = {"SWITCHBOARD_LOG_LEVEL": "WARNING", **settings}
            redis = RedisStats(redis_server.url) if counts_redis else None
            proxy = WireCounter(*address)
            try:
                gateway = GatewayProcess(
                    f"postgresql://postgres@{HOST}:{proxy.port}/{DATABASE}",
                    [sim.base_url],
                    env=env,
                )
                if not secret:
                    prepared = prepare(target, gateway, args.conversations)
                    secret, conversations = prepared.secret, prepared.conversation_ids
                else:
                    gateway.start()
                report[mode] = measure_counts(
                    gateway, direct, proxy, redis, secret, conversations, args, other_core
                )
                gateway.close()
            finally:
                proxy.close()
            _wait_for_backends_to_end(
                direct, at_most=bouncer.pool_size if settings is pooled else 0
            )
            url = f"postgresql://postgres@{address[0]}:{address[1]}/{DATABASE}"
            gateway = GatewayProcess(url, [sim.base_url], env=env)
            gateway.start()
            try:
                report[mode] |= measure_load(
                    gateway,
                    direct,
                    bouncer if mode == "pgbouncer" else None,
                    secret,
                    conversations,
                    args,
                    gateway_core,
                    other_core,
                )
            finally:
                gateway.close()
    finally:
        sim.close()
        redis_server.stop()
        bouncer.close()
        cluster.close()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"sizing-{stamp}.json").write_text(json.dumps(report, indent=2))
    print_report(report)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _send_urls(gateway: GatewayProcess, conversations: list[str]) -> list[str]:
    return [f"{gateway.root_url}/v1/conversations/{c}/messages" for c in conversations]


def measure_counts(
    gateway: GatewayProcess,
    direct: str,
    proxy: WireCounter,
    redis: RedisStats | None,
    secret: str,
    conversations: list[str],
    args: argparse.Namespace,
    core: int,
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {secret}"}
    urls = _send_urls(gateway, conversations)
    backends = BackendMeter(DATABASE)
    # Warm: pools open, statements prepared, the key cached.
    run_load(urls[:4], gateway_body(False), headers=auth, duration_s=2.0, core=core)
    with Counted(direct, proxy, backends, redis) as idle:
        time.sleep(10.0)
    result: dict[str, Any] = {
        "idle_per_s": {k: round(v / idle.seconds, 2) for k, v in idle.wire.items()}
    }
    for name, stream in (("send", False), ("stream", True)):
        # Four connections: concurrent enough to exercise the pool, too few to queue.
        with Counted(direct, proxy, backends, redis) as counted:
            load = run_load(
                urls[:4] if not stream else urls[4:8],
                gateway_body(stream),
                headers=auth,
                duration_s=300,
                max_requests=args.counted,
                stream_marker=b"event: delta" if stream else None,
                core=core,
            )
        assert load.errors == 0, load.summary()
        result[f"per_{name}"] = counted.per(load.requests, idle)
    return result


def measure_load(
    gateway: GatewayProcess,
    direct: str,
    bouncer: PgBouncer | None,
    secret: str,
    conversations: list[str],
    args: argparse.Namespace,
    gateway_core: int,
    other_core: int,
) -> dict[str, Any]:
    assert gateway.pid
    os.sched_setaffinity(gateway.pid, {gateway_core})
    auth = {"Authorization": f"Bearer {secret}"}
    urls = _send_urls(gateway, conversations)
    meter = CpuMeter(gateway.pid)
    backends = BackendMeter(DATABASE)
    bouncer_process = _bouncer_process(bouncer)
    run_load(urls[:8], gateway_body(False), headers=auth, duration_s=2.0, core=other_core)
    result: dict[str, Any] = {}
    for name, stream in (("send", False), ("stream", True)):
        per_connection = [urls[i % len(urls)] for i in range(args.connections)]
        cpu_before, db_before = meter.cpu_s(), backends.start()
        bouncer_before = _cpu_s(bouncer_process)
        with PeakConnections(direct, bouncer) as peak:
            load = run_load(
                per_connection,
                gateway_body(stream),
                headers=auth,
                duration_s=args.duration,
                stream_marker=b"event: delta" if stream else None,
                core=other_core,
            )
        requests = max(load.requests, 1)
        gateway_ms = (meter.cpu_s() - cpu_before) * 1000 / requests
        result[f"load_{name}"] = load.summary() | {
            "gateway_cpu_ms": round(gateway_ms, 3),
            "per_core_per_s": round(1000 / gateway_ms, 1) if gateway_ms else None,
            "db_cpu_ms": round(backends.used_s(db_before) * 1000 / requests, 3),
            "pgbouncer_cpu_ms": (
                round((_cpu_s(bouncer_process) - bouncer_before) * 1000 / requests, 3)
                if bouncer_process is not None
                else None
            ),
            "peak_backends": peak.backends,
            "peak_pgbouncer_clients": peak.bouncer_clients if bouncer else None,
        }
    result["rss_mb"] = round(meter.rss_mb(), 1)
    return result


def _wait_for_backends_to_end(direct: str, at_most: int) -> None:
    """Until the counted phase's connections are gone (so a peak is the next phase's);
    PgBouncer keeps its server connections open, idle."""
    sql = (
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 30
    while (left := int(fetch(direct, sql)[0]["n"])) > at_most:
        if time.monotonic() > deadline:
            # Then the next phase's peak counts them too: say so beside its numbers.
            print(f"warning: {left} backends still open; peaks include them", file=sys.stderr)
            return
        time.sleep(0.5)


def _bouncer_process(bouncer: PgBouncer | None) -> psutil.Process | None:
    if bouncer is None:
        return None
    pid = int((bouncer.dir / "pgbouncer.pid").read_text().strip())
    return psutil.Process(pid)


def _cpu_s(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


MODES = ("direct", "pgbouncer", "limits")
KINDS = ("send", "stream")
PER_EXCHANGE = (
    ("commits", "commits"),
    ("rollbacks", "rollbacks"),
    ("statements (nested included)", "statements"),
    ("round trips", "round_trips"),
    ("rows written", "rows_written"),
    ("PostgreSQL CPU ms", "db_cpu_ms"),
    ("Redis CPU ms", "redis_cpu_ms"),
)
UNDER_LOAD = (
    ("sends/s", "rps"),
    ("p50 ms", "p50_ms"),
    ("gateway CPU ms per send", "gateway_cpu_ms"),
    ("sends/s per gateway core", "per_core_per_s"),
    ("PostgreSQL CPU ms per send", "db_cpu_ms"),
    ("PgBouncer CPU ms per send", "pgbouncer_cpu_ms"),
    ("peak PostgreSQL backends", "peak_backends"),
    ("peak PgBouncer clients", "peak_pgbouncer_clients"),
)


def print_report(report: dict[str, Any]) -> None:
    machine = report["machine"]
    print(
        f"\nSizing ({machine['cpus']} CPUs, {machine['cpu']}; "
        f"load at start {machine['loadavg_at_start'][0]:.1f})"
    )
    columns = "".join(f" {f'{mode} {kind}':>16}" for mode in MODES for kind in KINDS)

    def table(title: str, prefix: str, rows: tuple[tuple[str, str], ...]) -> None:
        print(f"\n{title:30}{columns}")
        for label, key in rows:
            values = "".join(
                f" {report[mode][f'{prefix}_{kind}'][key]!s:>16}"
                for mode in MODES
                for kind in KINDS
            )
            print(f"{label:30}{values}")

    table("per exchange (counted)", "per", PER_EXCHANGE)
    table(f"at {report['settings']['connections']} connections", "load", UNDER_LOAD)
    for mode in MODES:
        print(f"\n[{mode}] statements per non-streamed send:")
        for row in report[mode]["per_send"]["top_statements"]:
            print(f"  {row['calls']:>6}  {row['query']}")
        per_send = report[mode]["per_send"]
        print(f"  functions: {per_send['functions']}")
        print(f"  protocol messages: {per_send['messages']}")
        if per_send["redis_calls"]:
            print(f"  Redis commands: {per_send['redis_calls']}")


if __name__ == "__main__":
    main()
