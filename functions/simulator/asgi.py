"""The little raw ASGI plumbing the simulator needs: types, body reading, canned responses.

No framework on purpose: a framework's routing, middleware stack and request objects cost more
per request than everything the simulator itself does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
SSE_HEADERS: list[tuple[bytes, bytes]] = [(_CONTENT_TYPE, b"text/event-stream; charset=utf-8")]


class ClientGone(Exception):  # noqa: N818 - an event, not a failure of ours
    """The client disconnected before the request body was complete."""


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A complete response with a ``content-length`` (uvicorn adds ``date`` and ``server``)."""
    headers = [(_CONTENT_TYPE, content_type), (_CONTENT_LENGTH, b"%d" % len(body))]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_empty(send: Send, status: int) -> None:
    """An empty body, as ``/health`` answers (vLLM's ``Response(status_code=...)``)."""
    await send(
        {"type": "http.response.start", "status": status, "headers": [(_CONTENT_LENGTH, b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case); ASGI servers lower-case the names."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
