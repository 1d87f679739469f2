"""Throughput of the vLLM simulator on ONE core.

The simulator runs pinned to core 0; the load generator runs in another process on the
other cores (``wrk`` when installed, else the aiohttp generator), sending small
non-streaming chat requests (no TTFT/ITL, 16 tokens) over N keep-alive connections for D
seconds.

    .venv/bin/python -m bench.bench_simulator [--duration 10] [--connections 32] [--stream]

Prints requests/second and p50/p99 latency. Traffic goes to 127.0.0.1 only, and stops by
itself.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bench.loadgen import run_load, run_wrk, wrk_available
from tests.support.simulator import SimulatorProcess


def request_body(tokens: int, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "Say hello to the benchmark, 안녕하세요 🚀"}],
        "max_tokens": tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    # json's ASCII escapes keep the body safe inside a wrk Lua script.
    return json.dumps(body).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed requests instead")
    parser.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    args = parser.parse_args()

    available = sorted(os.sched_getaffinity(0))
    sim_core, load_cores = available[0], available[1:] or available
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if wrk_available() and not args.stream else "aiohttp"
    body = request_body(args.tokens, args.stream)
    sim = SimulatorProcess("--tokens", str(args.tokens), "--log-level", "WARNING").start()
    try:
        assert sim.pid is not None
        os.sched_setaffinity(sim.pid, {sim_core})
        url = f"{sim.base_url}/chat/completions"

        def run(duration: float) -> dict[str, Any]:
            if generator == "wrk":
                return run_wrk(
                    [url], body, connections=args.connections, duration_s=duration, cores=load_cores
                )
            marker = b'"content"' if args.stream else None
            return run_load(
                [url] * args.connections,
                body,
                duration_s=duration,
                stream_marker=marker,
                core=load_cores[0],
            ).summary()

        run(2)  # warm up
        result = run(args.duration)
    finally:
        sim.close()
    kind = "streaming" if args.stream else "non-streaming"
    print(
        f"simulator on core {sim_core}, {generator} on cores {load_cores}: "
        f"{args.connections} connections, {args.duration}s, {kind}, {args.tokens} tokens"
    )
    print(
        f"requests/s: {result['rps']:.0f}   p50: {result['p50_ms']:.2f} ms   "
        f"p99: {result['p99_ms']:.2f} ms   errors: {result['errors']}"
    )


if __name__ == "__main__":
    main()
