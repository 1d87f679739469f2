"""The SSE parser: vLLM's one-line events, split anywhere, plus the rest of the SSE rules."""

from __future__ import annotations

import random

import pytest

from functions.core.llm.sse import MAX_PENDING_BYTES, SSEDecoder, SSEProtocolError

STREAM = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'


def test_whole_stream_in_one_chunk() -> None:
    assert SSEDecoder().feed(STREAM) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_events_split_at_any_byte(size: int) -> None:
    decoder = SSEDecoder()
    events: list[bytes] = []
    for start in range(0, len(STREAM), size):
        events += decoder.feed(STREAM[start : start + size])
    assert events == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_an_event_is_only_returned_once_its_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n') == []
    assert decoder.feed(b"\n") == [b'{"a":1}']


def test_crlf_multiline_comments_and_other_fields() -> None:
    raw = b": keep-alive\r\nevent: x\r\nid: 7\r\ndata: line1\r\ndata:line2\r\n\r\nretry: 5\n\n"
    assert SSEDecoder().feed(raw) == [b"line1\nline2"]


def test_flush_keeps_an_unterminated_last_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.flush() == [b"[DONE]"]
    assert decoder.flush() == []


def test_a_line_that_never_ends_is_refused() -> None:
    decoder = SSEDecoder()
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data: " + b"x" * MAX_PENDING_BYTES)


def _reference(raw: bytes) -> list[bytes]:
    """The SSE rules applied line by line, the slow and obvious way (no trailing flush)."""
    events, data = [], list[bytes]()
    for line in raw.replace(b"\r\n", b"\n").split(b"\n")[:-1]:
        if not line:
            if data:
                events.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    return events


# Streams mixing vLLM's one-line events with every other shape, so a chunk may be all
# one-line events (split in one go), or not (read line by line), or change between the two.
SHAPES = [
    STREAM,
    b'data: {"a":1}\n\ndata:{"b":2}\n\ndata: \n\ndata: [DONE]\n\n',
    b'data: {"a":1}\n\n: ping\n\ndata: {"b":2}\n\n',
    b'data: {"a":1}\n\ndata: x\ndata: y\n\ndata: {"c":3}\n\n\n\ndata: z\n\n',
    b'data: {"a":1}\r\n\r\ndata: {"b":2}\n\nevent: e\ndata: {"c":3}\n\n',
    b'data: {"a": "data: {\\"x\\"}"}\n\ndata: {"b":2}\n\n',
]


@pytest.mark.parametrize("raw", SHAPES)
@pytest.mark.parametrize("seed", range(20))
def test_any_chunking_of_any_shape_gives_the_reference_events(raw: bytes, seed: int) -> None:
    rng = random.Random(seed)
    decoder, events, start = SSEDecoder(), list[bytes](), 0
    while start < len(raw):
        size = rng.randint(1, len(raw))
        events += decoder.feed(raw[start : start + size])
        start += size
    assert events == _reference(raw)
