"""How a send ends when it does not complete: every branch leaves no reply ``pending``.

The caller went away (a cancelled task, a stream closed early), the model failed (an
``LLMError``), the gateway itself failed (anything else), or the stream ended without
finishing the reply. Each test checks what the caller saw, what the database holds and,
where the model was running, that the simulator saw the request aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, cast

import msgspec
import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.schemas import (
    ChatEvent,
    MessageStarted,
    ReplyDelta,
    ReplyDone,
    ReplyFailed,
)
from functions.core.chat.service import ChatService
from functions.core.llm.errors import LLMError
from functions.core.messages.schemas import MessageError, MessageOut
from tests.core.chat.conftest import (
    LONG_STREAM,
    MODEL,
    MakeClient,
    ScriptedUpstream,
    new_party,
    stored_of,
)
from tests.core.llm.conftest import Faults
from tests.core.llm.scripted_server import sse_response
from tests.support.simulator import SimulatorProcess

CANCELLED = MessageError(
    code="cancelled", message="the client disconnected before the reply was complete"
)
INTERNAL = MessageError(
    code="internal_error", message="the gateway failed while handling the reply"
)


def summary(rows: list[MessageOut]) -> list[tuple[str, str, str]]:
    return [(m.role, m.status, m.content) for m in rows]


async def assert_aborted(sim: SimulatorProcess) -> None:
    """The simulator stopped generating: nothing in flight, one request aborted.

    Polled for up to 5 s (returning as soon as it holds): the simulator is another process,
    and under a loaded suite it may take a while to be scheduled and see the disconnect.
    """
    stats = await sim.wait_for_async(lambda s: s["chat_in_flight"] == 0, within=5.0)
    assert stats["aborted"] == 1


@pytest.mark.parametrize(
    ("headers", "generating"),
    [
        pytest.param({"X-Sim-TTFT-Ms": "20000"}, False, id="before-the-first-token"),
        pytest.param(LONG_STREAM, True, id="mid-generation"),
    ],
)
async def test_a_send_cancelled_while_the_model_works_is_stored_cancelled(
    db: object,
    sim: SimulatorProcess,
    faults: Faults,
    make_client: MakeClient,
    headers: dict[str, str],
    generating: bool,
) -> None:
    party = await new_party()
    faults.add(headers)
    chat = ChatService(make_client(sim.base_url))
    task = asyncio.create_task(chat.send(party.says("Tell me a long story")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)
    assert summary(await stored_of(party)) == [
        ("user", "complete", "Tell me a long story"),
        ("assistant", "pending", ""),
    ]
    if generating:
        await asyncio.sleep(0.3)  # a few tokens at 50 ms each

    task.cancel()  # the caller went away
    with pytest.raises(asyncio.CancelledError):
        await task

    await assert_aborted(sim)
    user, reply = await stored_of(party)
    assert (user.role, user.status, user.content) == ("user", "complete", "Tell me a long story")
    assert (reply.role, reply.status, reply.error) == ("assistant", "cancelled", CANCELLED)
    # The model is read as a stream even for a non-streamed send: what arrived is kept.
    assert bool(reply.content) is generating
    assert reply.completed_at is not None
    assert reply.model == MODEL


async def test_an_unexpected_error_in_the_model_call_is_recorded_and_raised(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    # A client closed before the send: httpx raises RuntimeError, which the LLM client does
    # not map to LLMError (it is a bug in the caller, not the model's failure).
    client = make_client(sim.base_url)
    await client.aclose()
    party = await new_party()
    chat = ChatService(client)

    with pytest.raises(RuntimeError, match="client has been closed") as info:
        await chat.send(party.says("Hello?"))
    assert not isinstance(info.value, LLMError)

    events = chat.stream(party.says("Streamed hello?"))
    started = await anext(events)
    assert isinstance(started, MessageStarted)
    with pytest.raises(RuntimeError, match="client has been closed"):
        await anext(events)

    rows = await stored_of(party)
    assert summary(rows) == [
        ("user", "complete", "Hello?"),
        ("assistant", "failed", ""),
        ("user", "complete", "Streamed hello?"),
        ("assistant", "failed", ""),
    ]
    assert [m.error for m in rows] == [None, INTERNAL, None, INTERNAL]
    assert rows[3].id == started.assistant_message.id
    assert (await sim.stats_async())["total_requests"] == 0  # nothing reached the model


async def test_a_model_error_is_recorded_and_raised_with_both_ids(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    faults.add({"X-Sim-Fault": "500"})
    chat = ChatService(make_client(sim.base_url, llm_max_retries=0))
    with pytest.raises(LLMError) as info:
        await chat.send(party.says("Fail, please"))

    user, reply = await stored_of(party)
    assert (reply.status, reply.content) == ("failed", "")
    assert reply.error == MessageError(code=info.value.code, message=info.value.message)
    assert info.value.details["user_message_id"] == str(user.id)
    assert info.value.details["assistant_message_id"] == str(reply.id)


async def test_an_error_mid_stream_keeps_the_text_so_far(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    faults.add({"X-Sim-Fault": "cut:3"})
    chat = ChatService(make_client(sim.base_url))
    events = [event async for event in chat.stream(party.says("Break halfway"))]

    deltas = [e.text for e in events if isinstance(e, ReplyDelta)]
    failed = events[-1]
    assert isinstance(failed, ReplyFailed)
    assert failed.message is not None
    # Three tokens arrived before the cut (together or not): the stored text is theirs.
    assert 1 <= len(deltas) <= 3
    assert (failed.message.status, failed.message.content) == ("failed", "".join(deltas))
    assert failed.message.error is not None
    assert failed.error["code"] == failed.message.error.code == "llm_error"
    rows = await stored_of(party)
    assert rows[1] == failed.message
    assert summary(rows)[1] == ("assistant", "failed", "".join(deltas))


def chunk(content: str, finish_reason: str | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": content}}
    if finish_reason is not None:
        choice["finish_reason"] = finish_reason
    return msgspec.json.encode({"id": "chatcmpl-scripted", "model": MODEL, "choices": [choice]})


ROLE = (
    b'{"id":"chatcmpl-scripted","model":"sim-model","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""}}]}'
)


# Two ways a stream ends without finishing the reply: the connection closes before any
# finish_reason (and without [DONE]), or [DONE] arrives with no finish_reason ever sent.
STREAMS_WITHOUT_FINISH = [
    pytest.param(sse_response(ROLE, chunk("Hel"), chunk("lo")), id="closed-without-done"),
    pytest.param(
        sse_response(ROLE, chunk("Hel"), chunk("lo"), b"[DONE]"), id="done-without-finish"
    ),
]


async def test_the_same_script_with_its_finish_completes(
    db: object, make_client: MakeClient
) -> None:
    """The control for the two below: the finish chunk is the only difference."""
    party = await new_party()
    script = sse_response(ROLE, chunk("Hel"), chunk("lo", finish_reason="stop"), b"[DONE]")
    async with ScriptedUpstream(script) as upstream:
        chat = ChatService(make_client(upstream.base_url))
        events = [event async for event in chat.stream(party.says("Say hello"))]
        sent = await chat.send(party.says("Again"))

    done = events[-1]
    assert isinstance(done, ReplyDone)
    assert (done.message.status, done.message.content, done.message.finish_reason) == (
        "complete",
        "Hello",
        "stop",
    )
    assert (sent.status, sent.content) == ("complete", "Hello")
    rows = await stored_of(party)
    assert summary(rows) == [
        ("user", "complete", "Say hello"),
        ("assistant", "complete", "Hello"),
        ("user", "complete", "Again"),
        ("assistant", "complete", "Hello"),
    ]


@pytest.mark.parametrize("script", STREAMS_WITHOUT_FINISH)
async def test_a_stream_that_ends_without_finishing_is_an_error_event(
    db: object, make_client: MakeClient, script: bytes
) -> None:
    party = await new_party()
    async with ScriptedUpstream(script) as upstream:
        chat = ChatService(make_client(upstream.base_url))
        events = [event async for event in chat.stream(party.says("Say hello"))]
    assert len(upstream.chat_bodies) == 1

    # The text before the cut, in one delta or two (what arrived together), then the error.
    kinds = [type(e) for e in events]
    assert kinds[0] is MessageStarted
    assert kinds[-1] is ReplyFailed
    assert set(kinds[1:-1]) == {ReplyDelta}
    failed = events[-1]
    assert isinstance(failed, ReplyFailed)
    assert failed.message is not None
    assert failed.error["code"] == "llm_error"
    assert (failed.message.status, failed.message.content) == ("failed", "Hello")
    assert failed.message.finish_reason is None
    rows = await stored_of(party)
    assert summary(rows) == [("user", "complete", "Say hello"), ("assistant", "failed", "Hello")]
    assert rows[1] == failed.message


@pytest.mark.parametrize("script", STREAMS_WITHOUT_FINISH)
async def test_a_send_whose_reply_never_finishes_raises(
    db: object, make_client: MakeClient, script: bytes
) -> None:
    party = await new_party()
    async with ScriptedUpstream(script) as upstream:
        chat = ChatService(make_client(upstream.base_url))
        with pytest.raises(LLMError) as info:
            await chat.send(party.says("Say hello"))

    assert info.value.code == "llm_error"
    rows = await stored_of(party)
    assert summary(rows) == [("user", "complete", "Say hello"), ("assistant", "failed", "Hello")]
    assert rows[1].error == MessageError(code="llm_error", message=info.value.message)
    assert info.value.details["assistant_message_id"] == str(rows[1].id)


async def test_closing_the_stream_after_the_first_delta(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    faults.add(LONG_STREAM)
    chat = ChatService(make_client(sim.base_url))
    # What ChatService.stream returns is an async generator: the SSE response closes it.
    events = cast(
        "AsyncGenerator[ChatEvent, None]", chat.stream(party.says("Stream for a long time"))
    )
    started = await anext(events)
    first = await anext(events)
    assert isinstance(started, MessageStarted)
    assert isinstance(first, ReplyDelta)
    assert first.text

    await events.aclose()  # the HTTP client went away: the SSE response stops iterating

    await assert_aborted(sim)
    rows = await stored_of(party)
    assert summary(rows) == [
        ("user", "complete", "Stream for a long time"),
        ("assistant", "cancelled", first.text),
    ]
    assert rows[1].id == started.assistant_message.id
    assert rows[1].error == CANCELLED


async def test_cancelling_the_task_that_reads_a_stream(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    party = await new_party()
    faults.add(LONG_STREAM)
    chat = ChatService(make_client(sim.base_url))
    texts: list[str] = []
    two_deltas = asyncio.Event()

    async def read() -> None:
        async for event in chat.stream(party.says("Stream, then be cancelled")):
            if isinstance(event, ReplyDelta):
                texts.append(event.text)
                if len(texts) == 2:
                    two_deltas.set()
            assert not isinstance(event, ReplyDone)

    task = asyncio.create_task(read())
    await two_deltas.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await assert_aborted(sim)
    rows = await stored_of(party)
    assert summary(rows)[1] == ("assistant", "cancelled", "".join(texts))
    assert len(texts) >= 2


class WriteBlocker:
    """Holds the write lock another connection needs to finish ``message_id``.

    PostgreSQL: a row lock on the message (``SELECT ... FOR UPDATE`` in an open
    transaction). SQLite: the database's write lock (``BEGIN IMMEDIATE``); the blocked
    writer waits in SQLite's busy handler.
    """

    def __init__(self, engine: Engine[Any], message_id: uuid.UUID) -> None:
        self._engine = engine
        self._message_id = message_id
        self._pg: Any = None
        self._sqlite: sqlite3.Connection | None = None

    async def __aenter__(self) -> WriteBlocker:
        if isinstance(self._engine, PostgresEngine):
            self._pg = await self._engine.get_new_connection()
            await self._pg.execute("BEGIN")
            await self._pg.execute(
                "SELECT id FROM message WHERE id = $1 FOR UPDATE", self._message_id
            )
        else:
            assert isinstance(self._engine, SQLiteEngine)
            self._sqlite = sqlite3.connect(self._engine.path, isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        return self

    async def wait_until_blocked(self) -> None:
        """Until a writer waits on the lock (PostgreSQL shows it; SQLite: a moment)."""
        if self._pg is None:
            await asyncio.sleep(0.3)
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            waiting = await self._pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%UPDATE message SET status%'"
            )
            if waiting:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("no writer ever waited on the lock")

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()


async def test_a_second_cancellation_cannot_interrupt_recording_the_first(
    shared_db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    """The recorder promises a write "that a cancellation cannot interrupt". A task is
    often cancelled more than once (a client gone, then a shutdown; an outer timeout),
    and the second cancellation must not leave the reply pending for good."""
    party = await new_party()
    faults.add({"X-Sim-Fault": "hang"}, times=1)
    chat = ChatService(make_client(sim.base_url))
    task = asyncio.create_task(chat.send(party.says("Hang on")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)
    reply_id = (await stored_of(party))[1].id

    async with WriteBlocker(shared_db, reply_id) as blocker:
        task.cancel()  # the caller went away: the recorder writes "cancelled"...
        await blocker.wait_until_blocked()  # ...and waits for the lock
        task.cancel()  # ...when a second cancellation arrives
        await asyncio.sleep(0.1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)

    await assert_aborted(sim)
    rows = await stored_of(party)
    assert summary(rows) == [("user", "complete", "Hang on"), ("assistant", "cancelled", "")]
    # A reply left pending would keep the conversation busy until it counts as stale.
    nxt = await ChatService(make_client(sim.base_url), Exchanges(busy_timeout_s=1)).send(
        party.says("Next")
    )
    assert [(m.role, m.status) for m in await stored_of(party)][2:] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert nxt.seq == 4


async def test_a_reply_never_stays_pending_after_any_of_these(
    db: object, sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    """One conversation through cancellation, a model error and success: paired history."""
    party = await new_party()
    chat = ChatService(make_client(sim.base_url, llm_max_retries=0))
    faults.add({"X-Sim-Fault": "hang"}, times=1)
    faults.add({"X-Sim-Fault": "500"}, times=1)

    hung = asyncio.create_task(chat.send(party.says("one")))
    await sim.wait_for_async(lambda s: s["chat_in_flight"] == 1)
    hung.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hung
    with pytest.raises(LLMError):
        await chat.send(party.says("two"))
    done = await chat.send(party.says("three"))

    rows = await stored_of(party)
    assert [(m.seq, m.role, m.status) for m in rows] == [
        (1, "user", "complete"),
        (2, "assistant", "cancelled"),
        (3, "user", "complete"),
        (4, "assistant", "failed"),
        (5, "user", "complete"),
        (6, "assistant", "complete"),
    ]
    assert rows[5] == done
    # Only the completed exchange is history: the model saw "three" alone.
    body = (await sim.stats_async())["last_chat_request"]["body"]
    assert body["messages"] == [{"role": "user", "content": "three"}]
