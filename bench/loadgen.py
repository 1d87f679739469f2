"""A small closed-loop HTTP load generator (aiohttp), run in its own process.

Each of N connections sends its next request as soon as the previous one is answered, for
a fixed time or a fixed count, and records every latency. For streams it also records the
time to the first byte and to the first content event. Only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "first_byte_p50_ms": percentile(self.first_byte_ms, 50),
            "first_token_p50_ms": percentile(self.first_token_ms, 50),
            "first_token_p99_ms": percentile(self.first_token_ms, 99),
        }


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1], 3)


async def _run(
    urls: list[str],
    body: bytes,
    headers: dict[str, str],
    duration_s: float,
    max_requests: int | None,
    stream_marker: bytes | None,
) -> LoadResult:
    import aiohttp

    result = LoadResult()
    connector = aiohttp.TCPConnector(limit=len(urls), force_close=False)
    deadline = time.perf_counter() + duration_s
    budget = [max_requests if max_requests is not None else -1]

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        while time.perf_counter() < deadline and budget[0] != 0:
            budget[0] -= 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    if stream_marker is None:
                        await response.read()
                    else:
                        seen_token = False
                        first = True
                        async for chunk in response.content.iter_any():
                            now = time.perf_counter()
                            if first:
                                result.first_byte_ms.append((now - started) * 1000)
                                first = False
                            if not seen_token and stream_marker in chunk:
                                result.first_token_ms.append((now - started) * 1000)
                                seen_token = True
                    ok = response.status < 300
            except aiohttp.ClientError:
                ok = False
            if ok:
                result.requests += 1
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                result.errors += 1

    begin = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, url) for url in urls))
    result.elapsed_s = time.perf_counter() - begin
    return result


def _child(conn: Any, core: int | None, args: tuple[Any, ...]) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    conn.send(asyncio.run(_run(*args)))
    conn.close()


def run_load(
    urls: list[str],
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    duration_s: float = 10.0,
    max_requests: int | None = None,
    stream_marker: bytes | None = None,
    core: int | None = None,
) -> LoadResult:
    """One closed-loop connection per URL, in a separate process (pinned to ``core``)."""
    assert all(url.startswith("http://127.0.0.1:") for url in urls), "load stays on loopback"
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    headers = {"Content-Type": "application/json", **(headers or {})}
    process = context.Process(
        target=_child,
        args=(child, core, (urls, body, headers, duration_s, max_requests, stream_marker)),
    )
    process.start()
    # Poll rather than block, so a worker that dies on start fails the run instead of
    # hanging it.
    while not parent.poll(0.5):
        if not process.is_alive():
            raise RuntimeError(f"the load generator exited with {process.exitcode}")
    result: LoadResult = parent.recv()
    process.join()
    return result
