"""A bare HTTP/1.1 client on asyncio streams, for tests that must control the socket itself
(disconnect in the middle of a stream, a half-read response)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def post_json(
        cls, port: int, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = json.dumps(body).encode()
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        return cls(reader, writer)

    async def read_head(self, within: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), within)

    async def read_until(self, marker: bytes, within: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(marker), within)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
