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
import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0

# Processes still alive when the test run exits (a crashed fixture, Ctrl-C) are killed here.
_LIVE: set[SimulatorProcess] = set()


class SimulatorStartError(RuntimeError):
    """The simulator exited or did not answer ``/health`` in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class SimulatorProcess:
    """One simulator subprocess bound to a fixed port; ``start``/``stop`` may be repeated."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.args: tuple[str, ...] = args
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = START_TIMEOUT_S) -> SimulatorProcess:
        """Start the process (on the same port as before) and wait until ``/health`` answers."""
        if self.running:
            return self
        for attempt in range(3):
            try:
                self._spawn_and_wait(timeout)
            except SimulatorStartError:
                # Another process may have taken the free port between probing and binding;
                # only a port we chose ourselves may be swapped for a new one.
                if (
                    self._fixed_port
                    or attempt == 2
                    or "address already in use" not in (self.stderr_text().lower())
                ):
                    raise
                self.port = free_port()
            else:
                return self
        raise AssertionError("unreachable")

    def _spawn_and_wait(self, timeout: float) -> None:
        self._close_stderr()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        cmd = [sys.executable, "-m", "functions.simulator", "--host", HOST, "--port"]
        cmd += [str(self.port), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SimulatorStartError(
                    f"simulator exited with {self._proc.returncode}:\n{self.stderr_text()}"
                )
            if self._answers_health():
                return
            time.sleep(0.02)
        self.kill()
        raise SimulatorStartError(
            f"simulator did not answer /health within {timeout}s:\n{self.stderr_text()}"
        )

    def _answers_health(self) -> bool:
        # Any HTTP answer counts: an --unhealthy simulator is up but says 503.
        conn = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
        except OSError:
            return False
        finally:
            conn.close()
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait, then SIGKILL if it lingers. Safe to call twice."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once: an upstream that crashes rather than shuts down."""
        self._end(signal.SIGKILL, STOP_TIMEOUT_S)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None
        _LIVE.discard(self)

    def stderr_text(self) -> str:
        """Everything the process has logged so far (it logs to stderr)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text: str = self._stderr.read().decode("utf-8", "replace")
        return text

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _request_json(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5.0)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {} if payload is None else {"Content-Type": "application/json"}
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
        self, predicate: Any, within: float = 5.0, interval: float = 0.02
    ) -> dict[str, Any]:
        """Poll ``stats()`` until ``predicate(stats)`` is true (at most ``within`` seconds)."""
        deadline = time.monotonic() + within
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

    async def wait_for_async(
        self, predicate: Any, within: float = 5.0, interval: float = 0.02
    ) -> dict[str, Any]:
        """``wait_for`` that lets the test's own event loop keep running meanwhile."""
        deadline = time.monotonic() + within
        while True:
            stats = await self.stats_async()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {stats}")
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Stop the process and drop its log file."""
        self.stop()
        self._close_stderr()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

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


@atexit.register
def _kill_leftovers() -> None:
    for sim in list(_LIVE):
        sim.kill()
