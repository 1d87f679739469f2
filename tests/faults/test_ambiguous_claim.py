"""A claim that committed while its answer was lost with the connection leaves nothing stuck.

A small TCP proxy between the gateway and PostgreSQL (asyncio, on 127.0.0.1) reads the
PostgreSQL protocol the gateway speaks: it learns which prepared statement is the claim
function, and when the gateway executes it, it forwards the call, lets the server commit
and answer, then cuts both connections instead of passing the answer on. That is exactly
the ambiguous moment: the message and a pending reply naming a live process are stored,
and the process was told the claim failed. Sixteen conversations send at once while some
of their claims are cut.

The promises: the client is told its message may be stored, with the ids it was given; a
retry with the same ``Idempotency-Key`` gets a definite answer (the first send ended,
send again) within seconds; no conversation refuses a send for more than a few seconds;
nothing is lost, nothing stored twice, nothing left pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from functions.core.liveness.service import ABANDONED_MESSAGE
from tests.faults.conftest import DATABASE, Faults, json_send, new_conversation, stream_send
from tests.support.process import HOST

CLAIM_FUNCTION = b"switchboard_claim_v"
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
CONVERSATIONS = 16
MESSAGES = 3
CUTS = 4
REPLY_TOKENS = 3
CUT_EVERY = 5  # every fifth claim is cut (until CUTS), so cuts land amid other sends
# How long a conversation may refuse sends after a cut: the retirement is immediate once
# the database answers, so this is the machine's slowness, not a timer of the gateway's.
STUCK_LIMIT_S = 5.0
CONVERSATION_DEADLINE_S = 90.0


def _take(buffer: bytearray, *, typed: bool) -> tuple[int, bytes] | None:
    """The whole PostgreSQL message at the front of ``buffer`` (removed from it), if it has
    arrived: a typed one (a kind byte, then a length) or an untyped start-up one (kind 0)."""
    header = 5 if typed else 4
    if len(buffer) < header:
        return None
    end = header - 4 + int.from_bytes(buffer[header - 4 : header])
    if len(buffer) < end:
        return None
    message = (buffer[0] if typed else 0, bytes(buffer[header:end]))
    del buffer[:end]
    return message


@dataclass(eq=False)
class _Link:
    """One gateway connection through the proxy, and what the gateway sent on it."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    sent: bytearray = field(default_factory=bytearray)
    started: bool = False
    claim_statements: set[bytes] = field(default_factory=set)
    # Set once a claim's call went through: the server's answer is held, then cut.
    answer: bytearray | None = None

    def executes_claim(self, data: bytes) -> bool:
        """Whether ``data`` (client to server) completes a call of the claim function."""
        self.sent += data
        executes = False
        while True:
            message = _take(self.sent, typed=self.started)
            if message is None:
                return executes
            kind, body = message
            if not self.started:
                # SSL and GSS requests come before the start-up message proper.
                self.started = int.from_bytes(body[:4]) not in (SSL_REQUEST, GSSENC_REQUEST)
            elif kind == ord("P"):  # Parse: statement name, query text
                name, rest = body.split(b"\x00", 1)
                if CLAIM_FUNCTION in rest.split(b"\x00", 1)[0]:
                    self.claim_statements.add(name)
                else:
                    self.claim_statements.discard(name)
            elif kind == ord("B"):  # Bind: portal, statement name
                executes = executes or body.split(b"\x00", 2)[1] in self.claim_statements
            elif kind == ord("Q"):  # a simple query
                executes = executes or CLAIM_FUNCTION in body

    def answer_complete(self, data: bytes) -> bool:
        """Whether the held answer now ends with ReadyForQuery: the claim has committed."""
        assert self.answer is not None
        self.answer += data
        while (message := _take(self.answer, typed=True)) is not None:
            if message[0] == ord("Z"):
                return True
        return False

    def cut(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()


class ClaimCutter:
    """A TCP proxy to PostgreSQL that cuts some claims' connections after they committed."""

    def __init__(self, upstream_port: int, *, cuts: int, every: int) -> None:
        self.upstream_port = upstream_port
        self.cuts_left = cuts
        self.every = every
        self.claims_seen = 0
        self.cut_at: list[float] = []
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> ClaimCutter:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self

    def url(self, database: str) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"postgresql://postgres@{HOST}:{port}/{database}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(client=writer, server=up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._to_server(link, reader)),
            asyncio.create_task(self._to_client(link, up_reader)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.cut()
            self._links.discard(link)
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)

    async def _to_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if link.executes_claim(data):
                    self.claims_seen += 1
                    if self.cuts_left and self.claims_seen % self.every == 0:
                        self.cuts_left -= 1
                        link.answer = bytearray()  # before the call goes: hold its answer
                link.server.write(data)
                await link.server.drain()

    async def _to_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if link.answer is not None:
                    if link.answer_complete(data):
                        self.cut_at.append(time.monotonic())
                        link.cut()
                        return
                    continue
                link.client.write(data)
                await link.client.drain()


@dataclass
class Cut:
    """One send the cut reached, as its client lived it."""

    conversation: str
    content: str
    body: dict[str, Any]
    told_at: float
    # What a retry with the same key answered (status, error code), then the moment a
    # send to the conversation was accepted again.
    retried: tuple[int, str] | None = None
    accepted_at: float | None = None


@dataclass
class Conversation:
    id: str
    streamed: bool
    cuts: list[Cut] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


async def _send(
    client: httpx.AsyncClient, conversation: Conversation, content: str, key: str
) -> tuple[int, dict[str, Any]]:
    """One send; the status and, for an error, its JSON error (streamed or not)."""
    if not conversation.streamed:
        response = await json_send(
            client, conversation.id, content, idempotency_key=key, max_tokens=REPLY_TOKENS
        )
        return response.status_code, response.json()
    stream = await stream_send(
        client, conversation.id, content, idempotency_key=key, max_tokens=REPLY_TOKENS
    )
    if stream.body is not None:
        return stream.status, stream.body
    assert stream.ended_cleanly, (stream.broken, stream.names)
    name, data = stream.last
    return (201, data) if name == "done" else (stream.status, data)


async def _converse(client: httpx.AsyncClient, conversation: Conversation) -> None:
    """Send ``MESSAGES`` messages in turn, each retried as a careful client would: a 503
    with the same key, a finished first send (409 ``idempotent_request_failed``) with a
    new one."""
    deadline = time.monotonic() + CONVERSATION_DEADLINE_S
    for index in range(MESSAGES):
        content, key = f"{conversation.id[:8]} message {index}", str(uuid.uuid4())
        cut: Cut | None = None
        while True:
            assert time.monotonic() < deadline, (conversation, content)
            status, body = await _send(client, conversation, content, key)
            code = body.get("error", {}).get("code", "") if status != 201 else ""
            if cut is not None and cut.retried is None:
                cut.retried = (status, code)
            if status == 201:
                # Every cut of this message (its send again may be cut too) ends here.
                for earlier in conversation.cuts:
                    if earlier.content == content and earlier.accepted_at is None:
                        earlier.accepted_at = time.monotonic()
                break
            if status == 503 and body["error"]["details"].get("stored") == "unknown":
                cut = Cut(conversation.id, content, body, time.monotonic())
                conversation.cuts.append(cut)
                continue  # the same key: safe, and it says what became of the send
            if code == "idempotent_request_failed":
                key = str(uuid.uuid4())
                continue
            conversation.refusals.append(code)
            await asyncio.sleep(0.1)


async def test_a_claim_whose_answer_is_lost_leaves_nothing_stuck(faults: Faults) -> None:
    proxy = await ClaimCutter(faults.cluster.port, cuts=CUTS, every=CUT_EVERY).start()
    try:
        # Started from a thread: the proxy runs on this loop, and the gateway needs it to
        # reach the database before it answers its health probe.
        gateway = await asyncio.to_thread(faults.gateway, database_url=proxy.url(DATABASE))
        await faults.configure(gateway)
        async with faults.client(gateway, timeout=60) as client:
            conversations = [
                Conversation(await new_conversation(client), streamed=index % 2 == 1)
                for index in range(CONVERSATIONS)
            ]
            started = time.monotonic()
            await asyncio.gather(*(_converse(client, conv) for conv in conversations))
            took = time.monotonic() - started
    finally:
        await proxy.close()

    cuts = [cut for conv in conversations for cut in conv.cuts]
    stuck = [round(cut.accepted_at - cut.told_at, 2) for cut in cuts if cut.accepted_at]
    print(
        f"\n{CONVERSATIONS} conversations x {MESSAGES} messages in {took:.1f} s; "
        f"{len(proxy.cut_at)} claims cut after commit; retries with the same key got "
        f"{[cut.retried for cut in cuts]}; each conversation took a send again after "
        f"{stuck} s; refusals meanwhile: {[c.refusals for c in conversations if c.refusals]}"
    )
    assert len(proxy.cut_at) == CUTS
    # Waiting for a retired reply is all a client may meet, and only briefly (below).
    refused = {code for conv in conversations for code in conv.refusals}
    assert refused <= {"conversation_busy", "idempotent_request_in_progress"}, refused
    assert len(cuts) == CUTS  # each cut told its client, once

    for cut in cuts:
        error = cut.body["error"]
        assert error["code"] == "database_unavailable"
        assert "may or may not be stored" in error["message"]
        assert "same Idempotency-Key is safe" in error["message"]
        details = error["details"]
        assert details["conversation_id"] == cut.conversation
        assert details["message_ids"] == [details["user_message_id"]]
        # The cut came after the commit: the message is stored under the ids it was given,
        # and its reply, never generated, retired as such.
        [asked] = await faults.query(
            "SELECT content, conversation FROM message WHERE id = $1",
            uuid.UUID(details["user_message_id"]),
        )
        assert (asked["content"], str(asked["conversation"])) == (cut.content, cut.conversation)
        [reply] = await faults.query(
            "SELECT status, error_code, error_message FROM message WHERE id = $1",
            uuid.UUID(details["assistant_message_id"]),
        )
        assert tuple(reply) == ("failed", "interrupted", ABANDONED_MESSAGE)
        # The retry with the same key was told the first send is over: send again (a 409,
        # or streamed, a 200 whose one event is that error).
        assert cut.retried in {
            (409, "idempotent_request_failed"),
            (200, "idempotent_request_failed"),
        }
        assert cut.accepted_at is not None
        assert cut.accepted_at - cut.told_at < STUCK_LIMIT_S

    # Nothing lost, nothing twice: per conversation, every message once with a complete
    # reply, each cut one once more before it, with its retired reply; nothing pending.
    for conv in conversations:
        rows = await faults.messages(conv.id)
        pairs = zip(rows[::2], rows[1::2], strict=True)
        exchanges = [(ask["content"], reply["status"]) for ask, reply in pairs]
        expected: list[tuple[str, str]] = []
        for index in range(MESSAGES):
            content = f"{conv.id[:8]} message {index}"
            expected += [(content, "failed")] * sum(cut.content == content for cut in conv.cuts)
            expected.append((content, "complete"))
        assert exchanges == expected
        assert [row["role"] for row in rows] == ["user", "assistant"] * len(expected)
    assert await faults.pending() == []
