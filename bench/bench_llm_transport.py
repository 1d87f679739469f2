"""Which HTTP transport should the LLM client use? Measure them in one run.

For each variant a tiny Litestar pass-through app (``POST /v1/chat/completions`` forwarded
to the simulator, the answer returned as is) runs under uvicorn in its own process. The
closed-loop load generator of ``bench/loadgen.py`` (its own process too) keeps
``--concurrency`` requests in flight against it for ``--duration`` seconds, and the
pass-through process's CPU time (user + system, from psutil) is divided by the requests it
completed. The simulator hit directly is the baseline.

Variants:
  direct          the simulator itself, no pass-through (baseline)
  httpx           httpx.AsyncClient, default httpcore transport
  httpx-aiohttp   httpx.AsyncClient + httpx_aiohttp.AiohttpTransport (the PyPI package)
  httpx-sb        httpx.AsyncClient + functions.core.llm.transport.AiohttpTransport
  aiohttp         a raw aiohttp.ClientSession (the floor for an aiohttp-based transport)
  llmclient       functions.core.llm LLMClient.chat / stream_chat end to end (the real
                  client: it decodes the answer and re-encodes it, so it does more work)

Workloads: ``chat`` (non-streaming) and ``stream`` (SSE passed through chunk by chunk).

    .venv/bin/python bench/bench_llm_transport.py    # 3 interleaved rounds of 3 s per row
"""

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil

# The load generator's worker process re-imports this module (multiprocessing "spawn"), so
# only light imports live at the top; the app, simulator and client are imported where used.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

if TYPE_CHECKING:
    from tests.support.simulator import SimulatorProcess

HOST = "127.0.0.1"
VARIANTS = ("direct", "httpx", "httpx-aiohttp", "httpx-sb", "aiohttp", "llmclient")
WORKLOADS = ("chat", "stream")
CHAT_PATH = "/v1/chat/completions"
LIMIT = 256


# -- the pass-through app (runs in a subprocess) -------------------------------------------


def _httpx_forwarder(variant: str, upstream: str) -> tuple[Any, Any, Callable[[], Any]]:
    import httpx

    limits = httpx.Limits(max_connections=LIMIT, max_keepalive_connections=LIMIT)
    transport: httpx.AsyncBaseTransport | None = None
    if variant == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport as PackageTransport

        transport = PackageTransport(limits=limits)
    elif variant == "httpx-sb":
        from functions.core.llm.transport import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    client = httpx.AsyncClient(transport=transport, limits=limits, timeout=30.0)
    headers = {"Content-Type": "application/json"}

    async def chat(body: bytes) -> bytes:
        response = await client.post(upstream, content=body, headers=headers)
        return response.content

    async def stream(body: bytes) -> AsyncIterator[bytes]:
        async with client.stream("POST", upstream, content=body, headers=headers) as response:
            async for chunk in response.aiter_raw():
                yield chunk

    return chat, stream, client.aclose


def _aiohttp_forwarder(upstream: str) -> tuple[Any, Any, Callable[[], Any]]:
    session: aiohttp.ClientSession | None = None
    headers = {"Content-Type": "application/json"}

    def get() -> aiohttp.ClientSession:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=LIMIT))
        return session

    async def chat(body: bytes) -> bytes:
        async with get().post(upstream, data=body, headers=headers) as response:
            return await response.read()

    async def stream(body: bytes) -> AsyncIterator[bytes]:
        async with get().post(upstream, data=body, headers=headers) as response:
            async for chunk in response.content.iter_any():
                yield chunk

    async def close() -> None:
        if session is not None:
            await session.close()

    return chat, stream, close


def _llmclient_forwarder(upstream: str) -> tuple[Any, Any, Callable[[], Any]]:
    import msgspec

    from functions.core.llm.client import LLMClient
    from functions.core.llm.schemas import ChatDelta, ChatRequest
    from functions.core.settings import Settings

    base = upstream.removesuffix("/chat/completions")
    settings = Settings(llm_urls=(base,), llm_max_inflight_per_upstream=LIMIT)
    client = LLMClient.from_settings(settings)
    decode = msgspec.json.Decoder(ChatRequest).decode
    encode = msgspec.json.encode

    async def chat(body: bytes) -> bytes:
        return encode(await client.chat(decode(body)))

    async def stream(body: bytes) -> AsyncIterator[bytes]:
        async for event in client.stream_chat(decode(body)):
            if isinstance(event, ChatDelta):
                yield b'data: {"text":' + encode(event.text) + b"}\n\n"
        yield b"data: [DONE]\n\n"

    return chat, stream, client.aclose


def serve(variant: str, port: int, upstream: str) -> None:
    # Annotations below are evaluated at definition time (no postponed evaluation in this
    # module), which Litestar needs when the names are local to this function.
    import uvicorn
    from litestar import Litestar, Request, get, post
    from litestar.response import Response, Stream

    # As in production (functions.core.logging): httpx's per-request INFO line is off.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if variant.startswith("httpx"):
        chat, stream, close = _httpx_forwarder(variant, upstream)
    elif variant == "aiohttp":
        chat, stream, close = _aiohttp_forwarder(upstream)
    else:
        chat, stream, close = _llmclient_forwarder(upstream)

    @post("/v1/chat/completions", status_code=200)
    async def forward(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        body = await request.body()
        if b'"stream":true' in body:
            return Stream(stream(body), media_type="text/event-stream")
        return Response(await chat(body), media_type="application/json")

    @get("/health")
    async def health() -> str:
        return "ok"

    app = Litestar([forward, health], on_shutdown=[close])
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


# -- the load generator --------------------------------------------------------------------


def _body(stream: bool) -> bytes:
    # The llmclient variant decodes this as a ChatRequest, which ignores the stream fields
    # (it sets them itself); the others forward the body untouched.
    base = b'{"model":"sim-model","messages":[{"role":"user","content":"Say hello to the bench"}]'
    return base + (b',"stream":true,"stream_options":{"include_usage":true}}' if stream else b"}")


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def measure(
    variant: str, workload: str, sim: "SimulatorProcess", args: argparse.Namespace
) -> dict[str, Any]:
    from bench.loadgen import run_load
    from tests.support.simulator import free_port

    stream = workload == "stream"
    async with AsyncExitStack() as stack:
        if variant == "direct":
            url, proc = f"{sim.base_url}/chat/completions", None
        else:
            port = free_port()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--serve",
                variant,
                "--port",
                str(port),
                "--upstream",
                f"{sim.base_url}/chat/completions",
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
            stack.push_async_callback(_stop, child)
            await _wait_ready(f"http://{HOST}:{port}/health", child)
            url, proc = f"http://{HOST}:{port}{CHAT_PATH}", psutil.Process(child.pid)
        sim_proc = psutil.Process(sim.pid)
        urls, body = [url] * args.concurrency, _body(stream)
        await asyncio.to_thread(run_load, urls, body, duration_s=args.warmup)
        cpu0 = _cpu_s(proc) if proc else 0.0
        sim0 = _cpu_s(sim_proc)
        # The load generator runs in its own process; an idle server spends no CPU while
        # it starts, so the CPU difference is the requests' alone.
        load = await asyncio.to_thread(run_load, urls, body, duration_s=args.duration)
        cpu = (_cpu_s(proc) - cpu0) if proc else None
        sim_cpu = _cpu_s(sim_proc) - sim0
    done = load.requests
    summary = load.summary()
    return {
        "variant": variant,
        "workload": workload,
        "rps": load.rps,
        "errors": load.errors,
        "cpu_ms": cpu * 1000 / done if cpu is not None and done else None,
        "sim_cpu_ms": sim_cpu * 1000 / done if done else None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
    }


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.terminate()
    await child.wait()


async def _wait_ready(url: str, child: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child.returncode is not None:
                raise RuntimeError(f"pass-through exited with {child.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("pass-through did not start")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def _spread(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if r[key] is not None]
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


async def run(args: argparse.Namespace) -> None:
    from tests.support.simulator import SimulatorProcess

    sim = SimulatorProcess("--tokens", str(args.tokens))
    await asyncio.to_thread(sim.start)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        # Rounds interleave the variants, so a burst of load from elsewhere on the machine
        # hits them all alike; the table reports each variant's median round.
        for round_no in range(1, args.rounds + 1):
            for workload in args.workloads:
                for variant in args.variants:
                    row = await measure(variant, workload, sim, args)
                    results.setdefault((workload, variant), []).append(row)
                    print(
                        f"  round {round_no} {workload:6} {variant:14} {row['rps']:8.0f} req/s "
                        f"{_fmt(row['cpu_ms'], '.3f')} ms CPU/req",
                        file=sys.stderr,
                    )
    finally:
        await asyncio.to_thread(sim.close)
    print(
        f"\nconcurrency {args.concurrency}, {args.rounds} rounds of {args.duration}s per variant "
        f"(after {args.warmup}s warm-up), medians; {args.tokens} tokens per answer; "
        f"{os.cpu_count()} CPUs; CPU = user+system of the pass-through process per request\n"
    )
    print(
        "| workload | variant | req/s | pass-through CPU ms/req | (min-max) "
        "| simulator CPU ms/req | p50 ms | p99 ms | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (workload, variant), rows in results.items():
        errors = sum(r["errors"] for r in rows)
        print(
            f"| {workload} | {variant} | {_fmt(_median(rows, 'rps'), '.0f')} "
            f"| {_fmt(_median(rows, 'cpu_ms'), '.3f')} | {_spread(rows, 'cpu_ms')} "
            f"| {_fmt(_median(rows, 'sim_cpu_ms'), '.3f')} "
            f"| {_fmt(_median(rows, 'p50_ms'), '.2f')} "
            f"| {_fmt(_median(rows, 'p99_ms'), '.2f')} | {errors} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--serve", choices=VARIANTS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
