"""A real HTTP server on a socket that answers every request with the same raw bytes.

For upstream behaviours the simulator does not offer: an older vLLM that ignores
``stream_options`` (no usage), a stream cut at an exact byte, FastAPI's own 404, a server
that reads the request and hangs up without answering, a server that never accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"


def http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def sse_response(*events: bytes) -> bytes:
    """A stream with no length: the body ends when the server closes the connection."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return head + b"".join(b"data: " + event + b"\n\n" for event in events)


class RawHttpServer:
    """A real server on 127.0.0.1 that reads each request whole (head and body) and lets a
    subclass answer it with raw bytes (``None``: close without answering)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def answer(self, head: bytes, path: bytes, body: bytes) -> bytes | None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            response = self.answer(head, head.split(b" ", 2)[1], body)
            if response is not None:
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class ScriptedServer(RawHttpServer):
    """Answers each request with ``response`` and closes; ``None`` closes without answering."""

    def __init__(self, response: bytes | None) -> None:
        super().__init__()
        self.response = response
        self.requests: list[bytes] = []

    def answer(self, head: bytes, path: bytes, body: bytes) -> bytes | None:
        self.requests.append(head + body)
        return self.response


class BlackHole:
    """A port whose listen backlog is full, so a connect attempt hangs until it times out."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind((HOST, 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((HOST, self.port))
            self._fillers.append(filler)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def close(self) -> None:
        for sock in [*self._fillers, self._listener]:
            sock.close()


def closed_port_url() -> str:
    """A base URL where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{HOST}:{port}/v1"
