"""Closed-loop HTTP load generators for the benchmarks; only 127.0.0.1 is ever targeted.

``run_load`` (aiohttp, in its own process): each of N connections sends its next request
as soon as the previous one is answered, for a fixed time or count, recording every
latency, and for streams the time to the first byte and to the first content event.
``run_wrk``: the same closed loop with wrk, for throughput runs where the generator must
cost little CPU of its own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


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


_WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    urls: list[str],
    body: bytes,
    *,
    connections: int,
    headers: dict[str, str] | None = None,
    duration_s: float = 10.0,
    cores: list[int] | None = None,
) -> dict[str, Any]:
    """Non-streaming load with wrk (C, so the generator costs little of the machine).

    With several URLs, requests go to them in turn. Returns the same keys as
    :meth:`LoadResult.summary` for the non-streaming fields.
    """
    assert all(url.startswith("http://127.0.0.1:") for url in urls), "load stays on loopback"
    split = [urlsplit(url) for url in urls]
    headers = {"Content-Type": "application/json", **(headers or {})}
    lua = ['wrk.method = "POST"']
    lua += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    # Body and paths are ASCII JSON / URL paths inside Lua long strings: nothing to escape.
    lua.append(f"wrk.body = [[{body.decode()}]]")
    lua.append("paths = {" + ", ".join(f'"{part.path}"' for part in split) + "}")
    lua.append("counter = 0")
    lua.append(
        "request = function() counter = counter + 1; "
        "return wrk.format(nil, paths[(counter % #paths) + 1]) end"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lua) + "\n")
    threads = max(1, len(cores or []))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s"]
    cmd += ["--latency", "-s", script.name, f"http://{split[0].netloc}"]
    if cores and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {pct: float(v) * _UNIT_MS[unit] for pct, v, unit in _WRK_LATENCY.findall(out)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return {
        "requests": requests,
        "errors": errors,
        "rps": round(rps, 1),
        "p50_ms": round(latency["50"], 3),
        "p99_ms": round(latency["99"], 3),
    }
