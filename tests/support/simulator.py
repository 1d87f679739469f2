"""Run the vLLM simulator (``python -m functions.simulator``) as a subprocess for tests.

A real process on a real socket, so the code under test talks HTTP exactly as it would to vLLM,
and a test can stop the upstream and bring it back on the same port.

    with running_simulator("--tokens", "8") as sim:
        httpx.get(f"{sim.base_url}/models")

    async with async_running_simulator("--ttft-ms", "50") as sim:
        ...

The child's stderr goes to a temporary file rather than a pipe (a pipe nobody reads fills up
and stalls the server); it is quoted in the error when the simulator fails to start.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from tests.support.process import (
    HOST,
    START_TIMEOUT_S,
    ServiceProcess,
    ServiceStartError,
    free_port,
)
from tests.support.timing import scaled

__all__ = [
    "SimulatorProcess",
    "SimulatorStartError",
    "async_running_simulator",
    "free_port",
    "running_simulator",
]


# How long a wait for the simulator's counters may take: the state waited for should come
# at once, so this only bounds a hang on a loaded machine.
WAIT_S = 10.0


class SimulatorStartError(ServiceStartError):
    """The simulator exited or did not answer ``/health`` in time."""


class SimulatorProcess(ServiceProcess):
    """One simulator subprocess bound to a fixed port; ``start``/``stop`` may be repeated."""

    health_path = "/health"

    def __init__(self, *args: str, port: int | None = None) -> None:
        super().__init__("functions.simulator", args, port=port)

    def command(self) -> list[str]:
        # Tests look at what the gateway forwarded: keep the last chat request for stats.
        return [
            *super().command(),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--record-requests",
        ]

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self, timeout: float = START_TIMEOUT_S) -> SimulatorProcess:
        try:
            super().start(timeout)
        except ServiceStartError as exc:
            raise SimulatorStartError(
                str(exc).replace("functions.simulator", "simulator")
            ) from None
        return self

    def stderr_text(self) -> str:
        """Everything the process has logged so far (it logs to stderr)."""
        return self.log_text()

    def _request_json(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5.0)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {} if payload is None else {"Content-Type": "application/json"}
            if "--api-key" in self.args:  # /sim/* are behind the simulator's key
                key = self.args[self.args.index("--api-key") + 1]
                headers["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path} -> {response.status}: {data!r}")
            return json.loads(data)
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        """``GET /sim/stats``: in-flight, total, aborted and per-path request counts."""
        result: dict[str, Any] = self._request_json("GET", "/sim/stats")
        return result

    def reset(self) -> None:
        """``POST /sim/reset``: zero the counters and the metrics, reseed the fault dice."""
        self._request_json("POST", "/sim/reset")

    def set_healthy(self, healthy: bool) -> None:
        """``POST /sim/health``: flip ``/health`` (and chat) between healthy and dead."""
        self._request_json("POST", "/sim/health", {"healthy": healthy})

    def wait_for(
        self, predicate: Any, within: float = WAIT_S, interval: float = 0.02
    ) -> dict[str, Any]:
        """Poll ``stats()`` until ``predicate(stats)`` is true (at most ``within`` seconds
        on a quiet machine, :func:`scaled` on this one)."""
        deadline = time.monotonic() + scaled(within)
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {stats}")
            time.sleep(interval)

    async def stats_async(self) -> dict[str, Any]:
        """``stats()`` off the event loop, for async tests with requests in flight."""
        return await asyncio.to_thread(self.stats)

    async def fresh(self) -> SimulatorProcess:
        """This shared simulator made ready for a test: nothing in flight (the previous
        test's requests ended), healthy, counters zeroed."""
        await self.wait_for_async(lambda s: s["in_flight"] == 0)
        await asyncio.to_thread(self.set_healthy, True)
        await asyncio.to_thread(self.reset)
        return self

    async def wait_for_async(
        self, predicate: Any, within: float = WAIT_S, interval: float = 0.02
    ) -> dict[str, Any]:
        """``wait_for`` that lets the test's own event loop keep running meanwhile."""
        deadline = time.monotonic() + scaled(within)
        while True:
            stats = await self.stats_async()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {stats}")
            await asyncio.sleep(interval)

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __repr__(self) -> str:
        return f"SimulatorProcess(port={self.port}, args={self.args!r}, running={self.running})"


@contextmanager
def running_simulator(*args: str, port: int | None = None) -> Iterator[SimulatorProcess]:
    """Start a simulator with these CLI flags; stop it on exit."""
    sim = SimulatorProcess(*args, port=port)
    sim.start()
    try:
        yield sim
    finally:
        sim.close()


@asynccontextmanager
async def async_running_simulator(
    *args: str, port: int | None = None
) -> AsyncIterator[SimulatorProcess]:
    """``running_simulator`` for async tests: start and stop run off the event loop."""
    sim = SimulatorProcess(*args, port=port)
    await asyncio.to_thread(sim.start)
    try:
        yield sim
    finally:
        await asyncio.to_thread(sim.close)
