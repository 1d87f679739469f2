"""Throughput of the vLLM simulator on ONE core.

The simulator runs pinned to core 0; the load generator runs in another process on the other
cores (``wrk`` when installed, else an aiohttp client), sending small non-streaming chat
requests (no TTFT/ITL, 16 tokens) over N keep-alive connections for D seconds.

    .venv/bin/python bench/bench_simulator.py [--duration 10] [--connections 32] [--stream]

Prints requests/second and p50/p99 latency. Traffic goes to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"


def request_body(tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "Say hello to the benchmark, 안녕하세요 🚀"}],
        "max_tokens": tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def start_simulator(port: int, core: int, tokens: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "functions.simulator", "--port", str(port)]
    cmd += ["--tokens", str(tokens), "--log-level", "WARNING"]
    use_taskset = shutil.which("taskset") is not None
    if use_taskset:
        cmd = ["taskset", "-c", str(core), *cmd]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not use_taskset:
        os.sched_setaffinity(proc.pid, {core})  # before it imports anything heavy
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("simulator did not start")


_WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    port: int, body: dict[str, Any], connections: int, duration: int, load_cores: list[int]
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            # ASCII JSON inside a Lua long string: no Lua escapes to get wrong.
            f"wrk.body = [[{json.dumps(body)}]]\n"
        )
    threads = max(1, len(load_cores))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    cmd += ["-s", script.name, f"http://{HOST}:{port}{PATH}"]
    if shutil.which("taskset") and load_cores:
        cmd = ["taskset", "-c", ",".join(map(str, load_cores)), *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {pct: float(v) * _UNIT_MS[unit] for pct, v, unit in _WRK_LATENCY.findall(out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "errors": float(errors.group(1)) if errors else 0.0,
    }


async def _aiohttp_load(
    port: int, body: dict[str, Any], connections: int, duration: float
) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    url = f"http://{HOST}:{port}{PATH}"
    stop_at = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": float(errors),
    }


def _aiohttp_child(
    port: int,
    body: dict[str, Any],
    connections: int,
    duration: int,
    load_cores: list[int],
    out: Any,
) -> None:
    if load_cores:
        os.sched_setaffinity(0, set(load_cores))
    out.put(asyncio.run(_aiohttp_load(port, body, connections, duration)))


def run_aiohttp(
    port: int, body: dict[str, Any], connections: int, duration: int, load_cores: list[int]
) -> dict[str, float]:
    queue: Any = multiprocessing.Queue()
    child = multiprocessing.Process(
        target=_aiohttp_child, args=(port, body, connections, duration, load_cores, queue)
    )
    child.start()
    result: dict[str, float] = queue.get(timeout=duration + 60)
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed requests instead")
    parser.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    args = parser.parse_args()

    available = cores()
    sim_core = available[0]
    load_cores = available[1:]
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "aiohttp"
    port = free_port()
    body = request_body(args.tokens, args.stream)
    sim = start_simulator(port, sim_core, args.tokens)
    try:
        run = run_wrk if generator == "wrk" else run_aiohttp
        run(port, body, args.connections, 2, load_cores)  # warm up
        result = run(port, body, args.connections, args.duration, load_cores)
    finally:
        sim.terminate()
        sim.wait(10)
    kind = "streaming" if args.stream else "non-streaming"
    print(
        f"simulator on core {sim_core}, {generator} on cores {load_cores or 'shared'}: "
        f"{args.connections} connections, {args.duration}s, {kind}, {args.tokens} tokens"
    )
    print(
        f"requests/s: {result['rps']:.0f}   p50: {result['p50_ms']:.2f} ms   "
        f"p99: {result['p99_ms']:.2f} ms   errors: {result['errors']:.0f}"
    )


if __name__ == "__main__":
    main()
