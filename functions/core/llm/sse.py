"""Incremental Server-Sent Events parser that yields only the ``data`` payloads.

vLLM writes every event as one ``data: <json>\\n\\n`` line, so the parser is built for that
case (a chunk of such events is split in one go, no per-byte work, no decoding to ``str``)
while still following the SSE rules for the rest: ``\\r\\n`` endings, several ``data`` lines
joined with ``\\n``, comments and other fields ignored, an event dispatched on a blank line.
"""

from __future__ import annotations

MAX_PENDING_BYTES = 8 * 1024 * 1024
_NEXT = b"\n\ndata: "


def _canonical(block: bytes) -> list[bytes] | None:
    """The events of ``block`` (whole events, ending with a blank line) when every one is
    a single ``data: `` line, as vLLM writes them; None for anything else.

    Splitting a block that starts with ``data: `` on the separator (a blank line then
    ``data: ``) gives each event's data; the block had no other line exactly when no piece
    holds a newline, which one search over the pieces joined says (a few C calls per
    chunk, no Python step per line, and no count of every byte's newlines).
    """
    if not block.startswith(b"data: ") or b"\r" in block:
        return None
    events = block[6:-2].split(_NEXT)
    if b"\n" in b"".join(events):
        return None
    return events


class SSEProtocolError(ValueError):
    """The stream is not SSE (a line grew past :data:`MAX_PENDING_BYTES` without ending)."""


class SSEDecoder:
    """Feed it raw chunks as they arrive; it returns each complete event's data."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk`` and return the data of every event it completed."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._data and (end := buffer.rfind(b"\n\n")) >= 0:
            whole = _canonical(buffer[: end + 2])
            if whole is not None:
                self._buffer = buffer[end + 2 :]
                if len(self._buffer) > MAX_PENDING_BYTES:
                    raise SSEProtocolError(f"SSE line longer than {MAX_PENDING_BYTES} bytes")
                return whole
        events: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_PENDING_BYTES:
            raise SSEProtocolError(f"SSE line longer than {MAX_PENDING_BYTES} bytes")
        return events

    def flush(self) -> list[bytes]:
        """End of stream: return a last event left without its blank line, if any.

        The SSE spec drops such an event; vLLM always terminates events, so keeping it only
        makes the client more forgiving of proxies that trim the final newline.
        """
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        self._data = []
        return events
