"""A streamed chat completion: vLLM's own chunks relayed as they arrive.

Each upstream event is forwarded byte for byte (``data: <payload>\\n\\n``) unless it must
change: vLLM is always asked for usage on every chunk (``chat_request.STREAM_USAGE``), so a
client that did not ask for ``continuous_usage_stats`` gets its chunks without ``usage``,
and one that did not ask for ``include_usage`` gets no usage chunk at all. The stream ends
with ``data: [DONE]``; a failure once the stream has begun is an error chunk (the SDKs
raise it), then ``[DONE]``. A client that leaves closes this generator, which closes the
send path's: vLLM is aborted and the reply stored ``cancelled`` with what arrived.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from functions.core.chat.schemas import ReplyDone, ReplyFailed
from functions.core.llm.schemas import UpstreamEvent
from functions.openai.completion import replayed_chunks
from functions.openai.failures import error_chunk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from functions.core.chat.schemas import ChatEvent, UpstreamBatch

DONE = b"data: [DONE]\n\n"
_USAGE_KEY = b',"usage":'
_BRACE = ord("{")
_encode = msgspec.json.encode
_decode = msgspec.json.decode
# Checks that bytes are one JSON value without building it (half the cost of decoding).
_one_value = msgspec.json.Decoder(msgspec.Raw).decode


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _is_one_value(data: memoryview) -> bool:
    try:
        _one_value(data)
    except msgspec.DecodeError:
        return False
    return True


def without_usage(raw: bytes) -> bytes:
    """A chunk's payload without its ``usage``. vLLM writes compact JSON with ``usage``
    last, so it is cut off in place when the tail is exactly that object; otherwise the
    chunk is decoded and written again."""
    at = raw.rfind(_USAGE_KEY)
    if at > 0 and raw.endswith(b"}"):
        start = at + len(_USAGE_KEY)
        # One JSON value that opens with a brace is an object.
        if raw[start] == _BRACE and _is_one_value(memoryview(raw)[start:-1]):
            return raw[:at] + b"}"
    chunk = _decode(raw)
    if isinstance(chunk, dict):
        chunk.pop("usage", None)
    return _encode(chunk)


class UsageWanted(msgspec.Struct, frozen=True):
    """What the client's ``stream_options`` asked for."""

    include: bool
    continuous: bool


_ID_HEAD = b'{"id":"'
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def with_id(raw: bytes, chunk_id: bytes) -> bytes:
    """A chunk's payload with its ``id`` replaced by ``chunk_id`` (the stored reply's
    ``chatcmpl-<hex>``, so the id a client reads is the one it can look up). vLLM writes
    compact JSON with ``id`` first: the value is swapped in place when it is a plain
    string there; otherwise the chunk is decoded and written again."""
    if raw.startswith(_ID_HEAD):
        end = raw.find(_QUOTE, len(_ID_HEAD))
        if end > 0 and raw[end - 1] != _BACKSLASH:
            return _ID_HEAD + chunk_id + raw[end:]
    chunk = _decode(raw)
    if not isinstance(chunk, dict) or "id" not in chunk:
        return raw
    chunk["id"] = chunk_id.decode()
    return _encode(chunk)


def relayed(
    event: UpstreamEvent, wanted: UsageWanted, chunk_id: bytes | None = None
) -> bytes | None:
    """One upstream event as the client should see it, or None to drop it; ``chunk_id``
    names it (None: vLLM's own id)."""
    if event.usage_only and not wanted.include:
        return None
    raw = event.raw if chunk_id is None else with_id(event.raw, chunk_id)
    if event.usage_only:
        return frame(raw)
    if event.usage is not None and not (wanted.include and wanted.continuous):
        return frame(without_usage(raw))
    return frame(raw)


async def relay(
    events: AsyncIterator[ChatEvent | UpstreamEvent | UpstreamBatch],
    wanted: UsageWanted,
    first: ChatEvent | UpstreamEvent | UpstreamBatch,
    chunk_id: bytes | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of a stream whose ``message`` event was already read, and then
    ``first`` (read to learn whether vLLM took the request); ``chunk_id``: the id every
    chunk carries (None: vLLM's own)."""
    relayed_any = False
    # The events are read here, not through a wrapper that puts ``first`` back in front:
    # an async generator more would cost a resumption on every chunk.
    next_event = events.__anext__
    event = first
    try:
        while True:
            if isinstance(event, UpstreamEvent):
                relayed_any = True
                if (data := relayed(event, wanted, chunk_id)) is not None:
                    yield data
            elif isinstance(event, ReplyDone):
                if not relayed_any:  # a replay: the stored reply, as chunks
                    for chunk in replayed_chunks(event, include_usage=wanted.include):
                        yield frame(_encode(chunk))
                yield DONE
                return
            elif isinstance(event, ReplyFailed):
                yield frame(_encode(error_chunk(event.error)))
                yield DONE
                return
            try:
                event = await next_event()
            except StopAsyncIteration:
                return
    finally:
        # Closing the send path here (not at garbage collection) aborts vLLM at once.
        await events.aclose()  # type: ignore[attr-defined]
