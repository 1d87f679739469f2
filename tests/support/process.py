"""Every process a test starts, and a service under test as a real subprocess on a real
port (start, stop, restart, logs).

Each process starts in a session (and so a process group) of its own, registered here
until it is stopped, so that what it started in turn (uvicorn's workers, a flow run's
subprocess) goes with it: :func:`start`, :func:`start_async` and :func:`run` are the only
ways tests start processes. Whatever is still registered is killed at exit and on
SIGTERM (:func:`kill_registered`), and ``tests/conftest.py`` fails the session if any
of them outlives it (:func:`leftovers`): a descendant, or an orphan still in one of the
sessions started here (a session outlives its leader; orphans are not descendants).

Waits are for a loaded machine (load 10-25 on 2 cores): generous, and stretched further by
:func:`tests.support.timing.scaled`.

A service's output goes to a temporary file rather than a pipe: a pipe nobody reads fills
up and stalls the server. It is quoted when the service fails to start.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from tests.support.timing import scaled

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


# Generous: a Python process importing the gateway on a machine at load 20 takes tens of
# seconds to answer its first request; a deadline only bounds a hang.
START_TIMEOUT_S = scaled(120.0)
STOP_TIMEOUT_S = scaled(15.0)
RUN_TIMEOUT_S = scaled(180.0)

_LIVE: set[ServiceProcess] = set()
# Process groups started here and not yet stopped: leader pid -> command, for the message.
_GROUPS: dict[int, str] = {}
# Every session started here, stopped or not: what is left in one is a leftover.
_SESSIONS: set[int] = set()


class ServiceStartError(RuntimeError):
    """The service exited, or did not answer its health path in time."""


def start(command: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(command, **popen)`` in a new session, registered until
    :func:`stop` or :func:`kill_group`."""
    process: subprocess.Popen[Any] = subprocess.Popen(command, start_new_session=True, **popen)
    _register(process.pid, command)
    return process


async def start_async(*command: str, **options: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` in a new session, registered like :func:`start`."""
    process = await asyncio.create_subprocess_exec(*command, start_new_session=True, **options)
    _register(process.pid, command)
    return process


def _register(leader: int, command: Sequence[str]) -> None:
    _GROUPS[leader] = shlex.join(command)
    _SESSIONS.add(leader)


def kill_group(leader: int) -> None:
    """SIGKILL the process group ``leader`` started, whatever is left of it, and forget it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)
    _GROUPS.pop(leader, None)


def stop(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM the process (its own shutdown, as a deploy would), wait up to ``timeout``,
    then SIGKILL its whole group: the process if it lingers, and anything it left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    kill_group(process.pid)
    return process.wait(timeout)


def run(
    command: Sequence[str],
    *,
    timeout: float = RUN_TIMEOUT_S,
    check: bool = False,
    input: str | bytes | None = None,
    capture_output: bool = False,
    **popen: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` in a group of its own: on a timeout, and after the command ends,
    its whole group is killed, so nothing it started outlives it."""
    if capture_output:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
    if input is not None:
        popen.setdefault("stdin", subprocess.PIPE)
    process = start(command, **popen)
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        kill_group(process.pid)
        exc.stdout, exc.stderr = process.communicate()
        raise
    finally:
        kill_group(process.pid)
    code = process.wait()
    if check and code != 0:
        raise subprocess.CalledProcessError(code, list(command), stdout, stderr)
    return subprocess.CompletedProcess(list(command), code, stdout, stderr)


def switchboard_cli(
    database_url: str, *args: str, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``switchboard ARGS`` in a process of its own, on ``database_url`` and no other
    ``SWITCHBOARD_*`` setting from this environment than those in ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return run(
        [sys.executable, "-m", "functions.cli", *args],
        cwd=REPO_ROOT,
        env={
            **inherited,
            "SWITCHBOARD_DATABASE_URL": database_url,
            "PYTHONPATH": str(REPO_ROOT),
            **(env or {}),
        },
        capture_output=True,
        text=True,
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
        code: Path = REPO_ROOT,
    ) -> None:
        self.module = module
        self.args = args
        self.env = env or {}
        # The checkout it runs from (a benchmark runs an earlier commit's beside this one).
        self.code = code
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
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code), env.get("PYTHONPATH")]))
        self._proc = start(
            self.command(),
            cwd=self.code,
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
        """SIGTERM, wait, then SIGKILL what is left of its group. Safe to call twice."""
        if self._proc is not None:
            stop(self._proc, timeout)
        self._forget()

    def kill(self) -> None:
        """SIGKILL at once, the process and what it started: a crash, not a shutdown."""
        if self._proc is not None:
            kill_group(self._proc.pid)
            self._proc.wait(STOP_TIMEOUT_S)
        self._forget()

    def _forget(self) -> None:
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


def leftovers() -> list[psutil.Process]:
    """Live processes this one started: its descendants, and whatever is still in a
    session started here, orphaned or not (zombies are dead: they only wait to be reaped)."""
    me = os.getpid()
    found = {child.pid: child for child in psutil.Process().children(recursive=True)}
    if _SESSIONS:
        for candidate in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if candidate.pid != me and os.getsid(candidate.pid) in _SESSIONS:
                    found.setdefault(candidate.pid, candidate)
    alive = []
    for candidate in found.values():
        with contextlib.suppress(psutil.Error):
            if candidate.status() != psutil.STATUS_ZOMBIE:
                alive.append(candidate)
    return alive


def describe(process: psutil.Process) -> str:
    """``pid command line`` for a message naming a process."""
    try:
        return f"{process.pid} {shlex.join(process.cmdline())}"
    except psutil.Error:
        return f"{process.pid} (gone)"


def kill_registered() -> None:
    """SIGKILL every group started here and every descendant left: a test that was cut
    short (a timeout, an interrupt) must not leave servers behind it."""
    for leader in list(_GROUPS):
        kill_group(leader)
    for child in leftovers():
        with contextlib.suppress(psutil.Error):
            child.kill()
    _LIVE.clear()


def kill_registered_on_sigterm() -> None:
    """On SIGTERM (a cancelled CI job), kill what tests started, then end as SIGTERM would."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        kill_registered()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)


atexit.register(kill_registered)
