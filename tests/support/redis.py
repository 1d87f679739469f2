"""A throwaway ``redis-server`` for the limits' tests, on a free port, started by the test
that needs it (never the Redis that may answer on 127.0.0.1:6379): no persistence, stopped
by PID when the test ends; :meth:`stop` and :meth:`start` again on the same port stage an
outage."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

from tests.ops.tools import debian_tool
from tests.support.process import free_port, start, stop
from tests.support.timing import scaled


class RedisServer:
    def __init__(self) -> None:
        # Installed from Debian when missing, as the other tools the tests drive.
        self.binary = debian_tool("redis-server", "redis-server")
        self.port = free_port()
        self.process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = start(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + scaled(20)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
