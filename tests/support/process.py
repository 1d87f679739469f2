"""A service under test as a real subprocess on a real port (start, stop, restart, logs).

The child's output goes to a temporary file rather than a pipe: a pipe nobody reads fills
up and stalls the server. It is quoted when the service fails to start.
"""

from __future__ import annotations

import atexit
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

_LIVE: set[ServiceProcess] = set()


class ServiceStartError(RuntimeError):
    """The service exited, or did not answer its health path in time."""


def switchboard_cli(
    database_url: str, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``switchboard ARGS`` in a process of its own, on ``database_url`` and no other
    ``SWITCHBOARD_*`` setting from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return subprocess.run(
        [sys.executable, "-m", "functions.cli", *args],
        cwd=REPO_ROOT,
        env={**env, "SWITCHBOARD_DATABASE_URL": database_url, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """``python -m <module> <args>`` bound to a port; ``start``/``stop`` may be repeated."""

    health_path = "/health"

    def __init__(
        self,
        module: str,
        args: tuple[str, ...],
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.args = args
        self.env = env or {}
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = START_TIMEOUT_S) -> ServiceProcess:
        """Start (on the same port as before) and wait until the health path answers."""
        if self.running:
            return self
        for attempt in range(3):
            try:
                self._spawn_and_wait(timeout)
            except ServiceStartError:
                # The free port may have been taken between probing and binding; only a
                # port we chose ourselves may be swapped for a new one.
                if (
                    self._fixed_port
                    or attempt == 2
                    or "address already in use" not in (self.log_text().lower())
                ):
                    raise
                self.port = free_port()
            else:
                return self
        raise AssertionError("unreachable")

    def _spawn_and_wait(self, timeout: float) -> None:
        self._close_log()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceStartError(
                    f"{self.module} exited with {self._proc.returncode}:\n{self.log_text()}"
                )
            if self._answers_health():
                return
            time.sleep(0.02)
        self.kill()
        raise ServiceStartError(
            f"{self.module} did not answer {self.health_path} within {timeout}s:\n{self.log_text()}"
        )

    def _answers_health(self) -> bool:
        # Any HTTP answer counts: an unhealthy service is up but may say 503.
        conn = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
        try:
            conn.request("GET", self.health_path)
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
        """SIGKILL at once: a crash rather than a shutdown."""
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

    def log_text(self) -> str:
        """Everything the process has written so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        self._close_log()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for service in list(_LIVE):
        service.kill()
