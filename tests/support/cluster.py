"""A private PostgreSQL cluster that a test may stop, start and restart.

``scripts/with-postgres.sh`` finds a server for the whole suite; a test that takes the
database away (``pg_ctl restart``, a stop of a few seconds) needs one of its own, so that
nothing else loses its connections. :class:`PostgresCluster` makes one the same way: initdb
into a temporary directory (as the ``postgres`` user when run as root: initdb and postgres
refuse to run as root), trust authentication, ``fsync=off``, on a free port of 127.0.0.1.

    cluster = PostgresCluster().start()
    cluster.restart()            # pg_ctl restart -m fast
    cluster.stop(); cluster.start()
    cluster.close()              # stopped by its postmaster's pid, directory removed
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from tests.support.process import HOST, free_port
from tests.support.timing import scaled

OWNER = "postgres"
PG_CTL_TIMEOUT_S = int(scaled(60))

StopMode = Literal["smart", "fast", "immediate"]


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message quotes its output and the server log."""


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's ``bin`` (where ``with-postgres.sh`` looks)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version)
    if not found:
        raise ClusterError("no initdb under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return found[-1].parent


def _version(initdb: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in initdb.parent.parent.name.split(".") if part.isdigit())


class PostgresCluster:
    """One initdb'd cluster in a temporary directory; stop/start/restart may be repeated."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="switchboard-faults-pg."))
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam(OWNER)  # KeyError: create it first (with-postgres.sh does so)
            shutil.chown(self.datadir, user=OWNER)
            self._as_owner = ["runuser", "-u", OWNER, "--"]
        self._initialised = False

    @property
    def log_path(self) -> Path:
        return self.datadir / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """Over the Unix socket: reachable while the server refuses TCP (``tcp=False``)."""
        return f"postgresql://postgres@/{database}?host={self.datadir}&port={self.port}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (first line of ``postmaster.pid``)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def _run(self, *args: str, timeout: float = PG_CTL_TIMEOUT_S) -> None:
        # Not process.run, which kills the command's group when it ends: the server that
        # `pg_ctl start` leaves running is in that group. close() stops it by its pid.
        result = subprocess.run(
            [*self._as_owner, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{Path(args[0]).name} exited with {result.returncode}: "
                f"{result.stdout}{result.stderr}\n{self.server_log()}"
            )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), action, "-D", str(self.datadir), "-w", *extra)

    def _server_options(self, *, tcp: bool = True) -> str:
        listen = f"-h {HOST}" if tcp else "-c listen_addresses=''"
        return (
            f"{listen} -p {self.port} -k {self.datadir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )

    def start(self, *, tcp: bool = True) -> PostgresCluster:
        """initdb on first use, then start and wait until it accepts connections.

        ``tcp=False`` listens on the Unix socket only (:meth:`socket_url`): the database
        is back for whoever holds the socket, still away for everyone on 127.0.0.1.
        """
        if not self._initialised:
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            )
            self._initialised = True
        self._pg_ctl(
            "start",
            "-l",
            str(self.log_path),
            "-t",
            str(PG_CTL_TIMEOUT_S),
            "-o",
            self._server_options(tcp=tcp),
        )
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """``pg_ctl stop``: ``fast`` ends sessions and checkpoints; ``immediate`` is a crash."""
        self._pg_ctl("stop", "-m", mode, "-t", str(PG_CTL_TIMEOUT_S))

    def restart(self, mode: StopMode = "fast") -> None:
        """``pg_ctl restart``: every connection is broken, the server is back at once."""
        self._pg_ctl(
            "restart",
            "-m",
            mode,
            "-l",
            str(self.log_path),
            "-t",
            str(PG_CTL_TIMEOUT_S),
            "-o",
            self._server_options(),
        )

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server (by its postmaster's pid if pg_ctl cannot) and remove its files."""
        pid = self.pid
        if pid is not None:
            try:
                self.stop("immediate")
            except (ClusterError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + scaled(10)
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
