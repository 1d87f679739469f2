"""A real PgBouncer (Debian's ``pgbouncer``) in front of one PostgreSQL database.

    with PgBouncer(database_url, pool_mode="transaction", pool_size=4) as bouncer:
        bouncer.url        # postgresql://postgres@127.0.0.1:PORT/<database>, pooled

It listens on a free port of 127.0.0.1 with trust authentication (as the suite's server
has), no Unix socket, and its files in a temporary directory; it runs in the foreground
as a process of this suite (registered, killed with its group), as the ``postgres`` user
when the tests run as root (PgBouncer refuses to run as root). The binary is installed
with apt-get when missing, as the operations tests install theirs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from tests.ops.tools import debian_tool
from tests.support import process
from tests.support.cluster import postgres_bindir
from tests.support.process import HOST, free_port
from tests.support.timing import scaled

OWNER = "postgres"
START_TIMEOUT_S = scaled(30.0)


class PgBouncer:
    """One PgBouncer for the database ``server_url`` names; ``url`` is that database
    through it."""

    def __init__(
        self,
        server_url: str,
        *,
        pool_mode: Literal["session", "transaction"] = "transaction",
        pool_size: int = 20,
        max_client_conn: int = 500,
    ) -> None:
        self.binary = debian_tool("pgbouncer", "pgbouncer")
        parts = urlsplit(server_url)
        self.database = parts.path.lstrip("/")
        self.user = unquote(parts.username or "postgres")
        self._server = (
            f"host={parts.hostname or HOST} port={parts.port or 5432} dbname={self.database} "
            f"user={self.user}" + (f" password={unquote(parts.password)}" if parts.password else "")
        )
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="switchboard-pgbouncer."))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def _write_config(self) -> Path:
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{self.database} = {self._server}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            f"max_client_conn = {self.max_client_conn}\n"
            # A client waits this long for a server connection before it is refused.
            "query_wait_timeout = 60\n"
            f"logfile = {self.log_path}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
            f"admin_users = {self.user}\n"
            f"stats_users = {self.user}\n"
        )
        return config

    def start(self) -> PgBouncer:
        config = self._write_config()
        command = [self.binary, str(config)]
        if os.geteuid() == 0:
            pwd.getpwnam(OWNER)  # KeyError: create it first (with-postgres.sh does so)
            shutil.chown(self.dir, user=OWNER)
            for path in self.dir.iterdir():
                shutil.chown(path, user=OWNER)
            command = ["runuser", "-u", OWNER, "--", *command]
        self._proc = process.start(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1.0):
            return True
        return False

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on PgBouncer's admin console (``POOLS``, ``STATS``, ...): its rows
        by column name. psql, since the console speaks only the simple query protocol."""
        result = process.run(
            [
                str(postgres_bindir() / "psql"),
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-A",
                "-F",
                "\t",
                "-c",
                f"SHOW {what}",
                "pgbouncer",
            ],
            capture_output=True,
            text=True,
            timeout=scaled(30),
            check=True,
        )
        header, *rows = result.stdout.splitlines()[:-1]  # the last line: "(N rows)"
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]

    def pool(self) -> dict[str, int]:
        """This database's pool: its client and server connections by state."""
        for row in self.show("POOLS"):
            if row["database"] == self.database:
                return {k: int(v) for k, v in row.items() if k.startswith(("cl_", "sv_"))}
        raise AssertionError(f"no pool for {self.database} in SHOW POOLS")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self._proc is not None:
            process.stop(self._proc)
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.close()
