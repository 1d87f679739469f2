"""What one HTTP connection may cost ``switchboard serve``: a uvicorn protocol with limits.

uvicorn's httptools protocol (the fast one, used here) has no limit of its own on a request's
head: a 64 MiB header is buffered whole, and a client that sends its head or its body slowly
holds a connection (and what it has sent) for as long as it likes; the idle keep-alive
timeout only runs between requests, and ``limit_concurrency`` is checked only once a head is
complete. (h11's ``h11_max_incomplete_event_size`` bounds the head, but not time, and h11 is
several times slower.) This protocol adds, per connection:

- the request line and headers together at most ``max_head_bytes`` (431 beyond), and at
  most ``max_headers`` header lines (431);
- the head complete within ``head_timeout_s`` of the connection opening or of its first
  byte on a kept-alive connection (408), and the body within ``body_timeout_s`` of the
  head (the connection is closed; the app sees the client gone). Time the app itself
  spends not reading (reading paused because it is busy) does not count;
- a client that stops reading its response (the socket's buffer stays full) is cut off
  after ``send_timeout_s``, so an unread response never holds memory for long;
- at most ``max_connections`` open connections per worker: one more is answered 503 and
  closed as soon as it opens, before anything is read from it.

What is not HTTP/1.1 is a JSON 400, in the head or in a chunked body alike (a body's
handler is then told the client left).

The body's size is the app's to bound (``SWITCHBOARD_MAX_BODY_BYTES``, 413); reading is
paused once 64 KiB of it wait unread, so a body never piles up here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    import asyncio

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from functions.core.settings import Settings


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits :class:`LimitedHttpToolsProtocol` enforces (see the module docstring)."""

    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 60.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_head_bytes=settings.http_max_head_bytes,
            max_headers=settings.http_max_headers,
            head_timeout_s=settings.http_head_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            send_timeout_s=settings.http_send_timeout_s,
            max_connections=settings.http_max_connections,
        )


CONFIG_ATTRIBUTE = "switchboard_http_limits"


def attach(config: Config, limits: HttpLimits) -> None:
    """Hand ``limits`` to every protocol built from ``config`` (in every worker: the config
    is what uvicorn sends to its worker processes)."""
    setattr(config, CONFIG_ATTRIBUTE, limits)


def _refusal(status: int, code: str, message: str, **details: Any) -> bytes:
    body = msgspec.json.encode(
        {"error": {"code": code, "message": message, "request_id": None, "details": details}}
    )
    head = (
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n"
    )
    if status == 503:
        head += b"retry-after: 1\r\n"
    return STATUS_LINE[status] + head + b"\r\n" + body


class _HeadRefusedError(Exception):
    """Raised from a parser callback to stop parsing a head that breaks a limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HttpLimits` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: HttpLimits = getattr(config, CONFIG_ATTRIBUTE, None) or HttpLimits()
        self._in_head = True
        self._head_bytes = 0
        self._parsed_bytes = 0  # of this head, as the parser hands it over
        self._header_count = 0
        self._completed = 0  # requests read whole on this connection
        self._refused: bytes | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                "server_busy",
                f"this server has {self.limits.max_connections} connections open: "
                "try again shortly",
                limit=self.limits.max_connections,
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The client is not reading what it is sent: the response waits, in memory, for it.
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(
                self.limits.send_timeout_s, self._send_timed_out
            )

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        self.logger.warning(
            "Client read nothing for %ss: connection closed.", self.limits.send_timeout_s
        )
        self.transport.abort()  # close() would wait for the unread buffer to drain

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, plus the head's timer and size.
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._arm_head_timer()
        completed_before = self._completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refused is not None:  # a limit broken inside a parser callback
                self._send_refusal()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head and self._completed == completed_before:
            # Checked after feeding: a chunk may end the head and carry body bytes, or end
            # a request and start the next one's head (not counted: the next read is). The
            # parser has then buffered at most this limit plus one read (256 KiB).
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refused = self._large_head()
                self._send_refusal()

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._parsed_bytes = 0
        self._header_count = 0
        self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        if self._parsed_bytes > self.limits.max_head_bytes:
            self._refuse_large_head()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refused = _refusal(
                431,
                "too_many_headers",
                f"a request may have at most {self.limits.max_headers} header lines",
                limit=self.limits.max_headers,
            )
            raise _HeadRefusedError
        # Counted as parsed too: a whole head that arrives in one read is parsed before
        # data_received can weigh it.
        self._parsed_bytes += len(name) + len(value) + 4
        if self._parsed_bytes > self.limits.max_head_bytes:
            self._refuse_large_head()
        super().on_header(name, value)

    def _large_head(self) -> bytes:
        return _refusal(
            431,
            "headers_too_large",
            f"the request line and headers exceed {self.limits.max_head_bytes} bytes",
            limit_bytes=self.limits.max_head_bytes,
        )

    def _refuse_large_head(self) -> None:
        # From a parser callback: the parser stops, data_received sends the refusal.
        self._refused = self._large_head()
        raise _HeadRefusedError

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own answer to what is not HTTP/1.1 (an unknown method, a malformed
        # header or length): plain text there, a JSON error like every other here.
        self._refused = _refusal(
            400,
            "bad_request",
            f"the request is not valid HTTP/1.1 ({msg.rstrip('.').lower()}): check the "
            "method, the header names and values, and Content-Length/Transfer-Encoding",
        )
        self._send_refusal()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._completed += 1
        self._cancel_body_timer()
        self._in_head = True  # whatever arrives next starts the next request's head
        self._head_bytes = 0
        self._header_count = 0
        super().on_message_complete()

    # -- limits ------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.head_timeout_s, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a response still going: its time starts after it.
            self._arm_head_timer()
            return
        self._refuse(
            408,
            "request_timeout",
            f"the request's headers did not arrive within {self.limits.head_timeout_s}s",
            limit_s=self.limits.head_timeout_s,
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The app is not reading (busy, or the body waits unread): not the client's fault.
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_timed_out
            )
            return
        self.logger.warning(
            "Request body not received within %ss: connection closed.", self.limits.body_timeout_s
        )
        self.transport.close()

    def _refuse(self, status: int, code: str, message: str, **details: Any) -> None:
        self._refused = _refusal(status, code, message, **details)
        self._send_refusal()

    def _send_refusal(self) -> None:
        self._cancel_timers()
        if self._refused is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(self._refused)
        elif not cycle.response_started and not self.pipeline:
            # A body that breaks HTTP (a malformed chunk) while its handler waits for it:
            # the handler is told the client left (its answer, if any, goes nowhere), and
            # the client gets this one. Never in the middle of a response, nor ahead of an
            # earlier pipelined request's.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(self._refused)
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
