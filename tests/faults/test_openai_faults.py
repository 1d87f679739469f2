"""The OpenAI door under faults, with the official ``openai`` client against real processes.

A deploy (SIGTERM) ends a door stream with the truth: an error chunk the SDK raises and
``[DONE]``, or the whole answer when it finishes within the grace. ``kill -9`` leaves a
reply that the next process (or a live peer's sweep) retires as ``interrupted``, and the
same history sent again continues that conversation. An upstream that cuts its stream,
stalls mid-stream (a proxy that stops passing it on) or never answers is an error the SDK
raises, and the reply is stored failed with what arrived and its usage so far. A client that closes the
SDK's stream aborts vLLM, and the reply is stored cancelled with its usage up to the cut.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import openai
import pytest
from openai import AsyncOpenAI

from tests.faults.conftest import (
    FIRST_TOKEN_TIMEOUT_S,
    GATEWAY_ENV,
    HANG_MODEL,
    LEASE_TTL_S,
    SLOW_MODEL,
    TOTAL_TIMEOUT_S,
    Faults,
    wait_until,
)
from tests.support.gateway import GatewayProcess
from tests.support.process import free_port
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

CUT_MODEL = "cut-model"
STALL_MODEL = "stall-model"
STALL_AFTER_BYTES = 2000  # the headers and a few chunks
CUT_AFTER = 5
IN_FLIGHT = 3


@pytest.fixture(scope="module")
def cut_simulator() -> Iterator[SimulatorProcess]:
    """An upstream that fails every stream after ``CUT_AFTER`` tokens (vLLM's mid-stream
    error event, then ``[DONE]``)."""
    sim = SimulatorProcess(
        "--model", CUT_MODEL, "--cut-after", str(CUT_AFTER), "--itl-ms", "20", "--tokens", "50"
    ).start()
    try:
        yield sim
    finally:
        sim.close()


@pytest.fixture(scope="module")
def stall_simulator() -> Iterator[SimulatorProcess]:
    """An upstream behind :class:`StallingProxy`: it answers, the proxy stops passing it on."""
    sim = SimulatorProcess("--model", STALL_MODEL, "--itl-ms", "20", "--tokens", "200").start()
    try:
        yield sim
    finally:
        sim.close()


class StallingProxy:
    """A TCP proxy in front of an upstream that, once a chat completion is asked through a
    connection, passes on ``allow`` bytes of the answer and then nothing more, keeping the
    connection open: vLLM stalled mid-stream, as a wedged engine or a dead network path
    looks to the gateway."""

    def __init__(self, upstream_port: int, allow: int) -> None:
        self.upstream_port = upstream_port
        self.allow = allow
        self.port = free_port()
        self.stalled = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        asked = asyncio.Event()
        pumps = [
            asyncio.create_task(self._requests(client_r, upstream_w, asked)),
            asyncio.create_task(self._answers(upstream_r, client_w, asked)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for writer in (client_w, upstream_w):
                writer.close()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, asked: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if b"POST /v1/chat/completions" in data:
                asked.set()
            writer.write(data)
            await writer.drain()

    async def _answers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, asked: asyncio.Event
    ) -> None:
        passed = 0
        while data := await reader.read(65536):
            if asked.is_set():
                data = data[: max(0, self.allow - passed)]
                passed += len(data)
                if passed >= self.allow:
                    self.stalled.set()
            if data:
                writer.write(data)
                await writer.drain()


@pytest.fixture
def door_faults(faults: Faults, cut_simulator: SimulatorProcess) -> Faults:
    # The same world (its gateways list too, so they are stopped), with the cut upstream.
    return dataclasses.replace(faults, sims={**faults.sims, CUT_MODEL: cut_simulator})


@dataclasses.dataclass
class Read:
    """What the SDK gave one streamed chat completion: text, finish, how it ended."""

    conversation: str = ""
    text: str = ""
    finish: str | None = None
    error: BaseException | None = None
    first_text: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


def sdk_of(faults: Faults, gateway: GatewayProcess) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{gateway.root_url}/v1",
        api_key=faults.alice_secret,
        max_retries=0,
        timeout=scaled(30.0),
    )


async def read_stream(sdk: AsyncOpenAI, seen: Read, **create: Any) -> Read:
    """Stream a chat completion to its end with the SDK; whatever it raises is kept."""
    try:
        stream = await sdk.chat.completions.create(stream=True, **create)
        seen.conversation = stream.response.headers["x-switchboard-conversation"]
        async for chunk in stream:
            for choice in chunk.choices:
                seen.text += choice.delta.content or ""
                seen.finish = choice.finish_reason or seen.finish
            if seen.text:
                seen.first_text.set()
    except Exception as exc:
        seen.error = exc
    finally:
        seen.first_text.set()  # a stream that never got text must not hang the test
    return seen


async def raw_stream(faults: Faults, gateway: GatewayProcess, seen: Read, **body: Any) -> bytes:
    """The same over raw httpx: every byte the door wrote (to check the framing's end)."""
    got = b""
    async with (
        faults.client(gateway) as client,
        client.stream("POST", "/v1/chat/completions", json={"stream": True, **body}) as response,
    ):
        seen.conversation = response.headers["x-switchboard-conversation"]
        async for part in response.aiter_raw():
            got += part
            if b'"content":"' in got:
                seen.first_text.set()
    return got


async def rows_of(faults: Faults, conversation: str) -> list[asyncpg.Record]:
    return await faults.query(
        "SELECT id, seq, role, content, status, error_code, prompt_tokens, completion_tokens "
        "FROM message WHERE conversation = $1 ORDER BY seq",
        uuid.UUID(conversation),
    )


async def exited(gateway: GatewayProcess) -> None:
    async def gone() -> bool:
        return not gateway.running

    await wait_until(gone, within=10)


async def test_sigterm_mid_stream_ends_with_an_error_chunk_and_done(faults: Faults) -> None:
    grace_s = 1.5
    gateway = faults.gateway(shutdown_grace_s=str(grace_s))
    await faults.configure(gateway)
    sdk = sdk_of(faults, gateway)
    body = {"model": SLOW_MODEL, "max_tokens": 150}
    seen = [Read() for _ in range(IN_FLIGHT)]
    streams = [
        asyncio.create_task(
            read_stream(sdk, read, messages=[{"role": "user", "content": f"sse {i}"}], **body)
        )
        for i, read in enumerate(seen[:-1])
    ]
    raw = asyncio.create_task(
        raw_stream(faults, gateway, seen[-1], messages=[{"role": "user", "content": "raw"}], **body)
    )
    slow = faults.sims[SLOW_MODEL]
    before = (await slow.stats_async())["chat_in_flight"]
    # And a non-streamed one: it is answered with the 503 when the grace runs out.
    whole = asyncio.create_task(
        sdk.chat.completions.with_raw_response.create(
            messages=[{"role": "user", "content": "whole"}], **body
        )
    )
    await asyncio.wait_for(asyncio.gather(*(r.first_text.wait() for r in seen)), scaled(30))
    await slow.wait_for_async(lambda stats: stats["chat_in_flight"] >= before + 1)
    assert gateway.pid is not None
    os.kill(gateway.pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    late: openai.APIError | None = None
    try:  # draining: a new request is a 503 the SDK may retry, never half-served
        await sdk.chat.completions.create(
            model=SLOW_MODEL, messages=[{"role": "user", "content": "late"}]
        )
    except openai.APIStatusError as refused:
        late = refused
    except openai.APIConnectionError:
        pass  # the listener already closed
    await asyncio.gather(*streams)
    written = await raw
    ended = (await asyncio.gather(whole, return_exceptions=True))[0]
    await sdk.close()
    await exited(gateway)

    # The non-streamed request: a 503 the SDK may retry (on the next process of a deploy).
    assert isinstance(ended, openai.APIStatusError), ended
    assert (ended.status_code, ended.code) == (503, "shutting_down")
    assert "x-should-retry" not in ended.response.headers
    whole_rows = await faults.query(
        "SELECT m.status, m.error_code FROM message m JOIN message u "
        "ON u.conversation = m.conversation AND u.seq = m.seq - 1 WHERE u.content = 'whole'"
    )
    assert [tuple(row) for row in whole_rows] == [("failed", "shutdown")]
    if isinstance(late, openai.APIStatusError):
        assert late.status_code == 503
        assert late.code == "shutting_down"
        assert late.response.headers["retry-after"]
        assert "x-should-retry" not in late.response.headers  # the SDK may retry it
    for read in seen[:-1]:
        assert isinstance(read.error, openai.APIError), read.error
        assert not isinstance(read.error, openai.APIStatusError)
        assert read.error.code == "shutting_down"
        assert read.text
    # Byte by byte: the last chunk is the error, then [DONE]; nothing cut.
    events = written.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    error = json.loads(events[-3].removeprefix(b"data: "))
    assert error["error"]["code"] == "shutting_down"
    assert error["error"]["type"] == "server_error"
    seen[-1].text = "".join(
        (choice["delta"].get("content") or "")
        for event in events[:-3]
        for choice in json.loads(event.removeprefix(b"data: "))["choices"]
    )
    for read in seen:
        rows = await rows_of(faults, read.conversation)
        assert [row["role"] for row in rows] == ["user", "assistant"]
        reply = rows[1]
        assert (reply["status"], reply["error_code"]) == ("failed", "shutdown")
        assert reply["content"] == read.text  # what was relayed is what was kept
        assert reply["completion_tokens"] >= 1
    assert await faults.pending() == []


async def test_sigterm_lets_a_door_stream_shorter_than_the_grace_finish(faults: Faults) -> None:
    grace_s = 6.0
    gateway = faults.gateway(shutdown_grace_s=str(grace_s))
    await faults.configure(gateway)
    sdk = sdk_of(faults, gateway)
    seen = [Read() for _ in range(IN_FLIGHT)]
    streams = [
        asyncio.create_task(
            read_stream(
                sdk,
                read,
                model=SLOW_MODEL,
                max_tokens=20,
                messages=[{"role": "user", "content": f"sse {i}"}],
                stream_options={"include_usage": True},
            )
        )
        for i, read in enumerate(seen)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.first_text.wait() for r in seen)), scaled(30))
    assert gateway.pid is not None
    os.kill(gateway.pid, signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.gather(*streams)
    await sdk.close()
    await exited(gateway)
    assert time.monotonic() - signalled < grace_s  # it did not sit out the grace
    for read in seen:
        assert read.error is None, read.error
        assert read.finish == "length"
        rows = await rows_of(faults, read.conversation)
        assert [(row["role"], row["status"]) for row in rows] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        assert rows[1]["content"] == read.text
        assert rows[1]["completion_tokens"] == 20
    assert await faults.pending() == []


async def test_kill_9_mid_stream_then_the_same_history_continues_the_conversation(
    faults: Faults,
) -> None:
    old = faults.gateway()
    await faults.configure(old)
    sdk = sdk_of(faults, old)
    first = await sdk.chat.completions.create(
        model=SLOW_MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hello"}]
    )
    history = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tell me more"},
    ]
    cut = Read()
    task = asyncio.create_task(
        read_stream(sdk, cut, model=SLOW_MODEL, max_tokens=300, messages=history)
    )
    await asyncio.wait_for(cut.first_text.wait(), scaled(30))
    assert len(await faults.pending()) == 1
    old.kill()
    await task
    await sdk.close()
    assert cut.error is not None  # a killed process cannot say goodbye: the stream is cut
    assert not isinstance(cut.error, openai.APIStatusError)

    new = faults.gateway()  # it ends its dead neighbour's lease at start, then sweeps

    async def nothing_pending() -> bool:
        return await faults.pending() == []

    await wait_until(nothing_pending, within=LEASE_TTL_S)
    rows = await rows_of(faults, cut.conversation)
    assert [(row["role"], row["status"], row["error_code"]) for row in rows] == [
        ("user", "complete", None),
        ("assistant", "complete", None),
        ("user", "complete", None),  # the stored user turn is not lost
        ("assistant", "failed", "interrupted"),
    ]
    assert rows[2]["content"] == "Tell me more"

    sdk = sdk_of(faults, new)
    again = Read()
    await read_stream(sdk, again, model=SLOW_MODEL, max_tokens=5, messages=history)
    await sdk.close()
    assert again.error is None, again.error
    # Threaded into the same conversation after the interrupted exchange, not a copy.
    assert again.conversation == cut.conversation
    rows = await rows_of(faults, cut.conversation)
    assert [(row["role"], row["status"]) for row in rows[4:]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[5]["content"] == again.text
    conversations = await faults.query("SELECT id FROM conversation")
    assert [str(row["id"]) for row in conversations] == [cut.conversation]
    assert await faults.pending() == []


async def test_an_upstream_that_cuts_the_stream_is_raised_and_stored_with_its_usage(
    door_faults: Faults,
) -> None:
    faults = door_faults
    gateway = faults.gateway()
    await faults.configure(gateway)
    sdk = sdk_of(faults, gateway)
    cut = await read_stream(
        sdk, Read(), model=CUT_MODEL, messages=[{"role": "user", "content": "Hello"}]
    )
    await sdk.close()
    assert isinstance(cut.error, openai.APIError), cut.error
    assert not isinstance(cut.error, openai.APIStatusError)
    assert cut.text
    rows = await rows_of(faults, cut.conversation)
    reply = rows[1]
    assert reply["status"] == "failed"
    assert reply["content"] == cut.text  # the partial text, as relayed
    # Its usage so far (vLLM counted every chunk): the tokens before the cut.
    assert reply["prompt_tokens"] > 0
    assert reply["completion_tokens"] == CUT_AFTER
    assert await faults.pending() == []


async def test_an_upstream_that_hangs_is_a_504_before_the_stream_starts(faults: Faults) -> None:
    gateway = faults.gateway()
    await faults.configure(gateway)
    sdk = sdk_of(faults, gateway)
    for stream in (True, False):
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(
                model=HANG_MODEL, stream=stream, messages=[{"role": "user", "content": "hello?"}]
            )
        failed_after_s = time.monotonic() - started
        assert caught.value.status_code == 504
        assert caught.value.code == "llm_timeout"
        assert "x-should-retry" not in caught.value.response.headers  # a retry may succeed
        # The first-token timeout ended it, not the total one.
        assert FIRST_TOKEN_TIMEOUT_S <= failed_after_s < FIRST_TOKEN_TIMEOUT_S + scaled(3)
        # The error says where the failed exchange was stored, as an answer does.
        headers = caught.value.response.headers
        rows = await rows_of(faults, headers["x-switchboard-conversation"])
        assert [(row["role"], row["status"], row["error_code"]) for row in rows] == [
            ("user", "complete", None),
            ("assistant", "failed", "llm_timeout"),
        ]
        assert [str(row["id"]) for row in rows] == [
            headers["x-switchboard-user-message-id"],
            headers["x-switchboard-reply-id"],
        ]
        assert rows[1]["content"] == ""
    await sdk.close()
    assert await faults.pending() == []


async def test_closing_the_sdk_stream_aborts_vllm_and_stores_the_reply_cancelled(
    faults: Faults,
) -> None:
    gateway = faults.gateway()
    await faults.configure(gateway)
    slow = await faults.sims[SLOW_MODEL].fresh()
    sdk = sdk_of(faults, gateway)
    stream = await sdk.chat.completions.create(
        model=SLOW_MODEL, stream=True, max_tokens=300, messages=[{"role": "user", "content": "Hi"}]
    )
    conversation = stream.response.headers["x-switchboard-conversation"]
    text = ""
    async for chunk in stream:
        text += "".join(choice.delta.content or "" for choice in chunk.choices)
        if len(text) >= 5 and chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    await sdk.close()
    stats = await slow.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    assert stats["aborted"] == 1

    async def settled() -> bool:
        return await faults.pending() == []

    await wait_until(settled, within=5)
    reply = (await rows_of(faults, conversation))[1]
    assert (reply["status"], reply["error_code"]) == ("cancelled", "cancelled")
    assert reply["content"].startswith(text)
    # Exact usage up to the cut: at least what the client read, far short of the 300 asked.
    assert reply["prompt_tokens"] > 0
    assert 1 <= reply["completion_tokens"] < 300


async def test_kill_9_a_peer_sweeps_the_reply_then_the_history_continues_there(
    faults: Faults,
) -> None:
    """Two processes on one database; the one streaming dies and is not restarted."""
    doomed = faults.gateway()
    peer = faults.gateway()
    await faults.configure(peer)
    history = [{"role": "user", "content": "Hello"}]
    sdk = sdk_of(faults, peer)
    first = await sdk.chat.completions.create(model=SLOW_MODEL, max_tokens=3, messages=history)
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tell me more"},
    ]
    doomed_sdk = sdk_of(faults, doomed)
    cut = Read()
    task = asyncio.create_task(
        read_stream(doomed_sdk, cut, model=SLOW_MODEL, max_tokens=300, messages=history)
    )
    await asyncio.wait_for(cut.first_text.wait(), scaled(30))
    doomed.kill()
    killed_at = time.monotonic()
    await task
    await doomed_sdk.close()
    assert cut.error is not None

    async def nothing_pending() -> bool:
        return await faults.pending() == []

    await wait_until(nothing_pending, within=3 * LEASE_TTL_S)
    swept_s = time.monotonic() - killed_at
    rows = await rows_of(faults, cut.conversation)
    assert [(row["role"], row["status"], row["error_code"]) for row in rows[2:]] == [
        ("user", "complete", None),
        ("assistant", "failed", "interrupted"),
    ]
    again = await read_stream(sdk, Read(), model=SLOW_MODEL, max_tokens=5, messages=history)
    await sdk.close()
    print(f"\ndoor, kill -9: the peer's sweep retired the reply {swept_s:.2f} s after it")
    assert again.error is None, again.error
    assert again.conversation == cut.conversation
    rows = await rows_of(faults, cut.conversation)
    assert [(row["role"], row["status"]) for row in rows[4:]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert len(await faults.query("SELECT id FROM conversation")) == 1


async def test_an_upstream_that_stalls_mid_stream_fails_at_the_token_timeout(
    faults: Faults, stall_simulator: SimulatorProcess
) -> None:
    async with StallingProxy(stall_simulator.port, STALL_AFTER_BYTES) as proxy:
        gateway = GatewayProcess(
            faults.url,
            [*(sim.base_url for sim in faults.sims.values()), proxy.base_url],
            env={**GATEWAY_ENV, "SWITCHBOARD_OUTCOME_JOURNAL_DIR": str(faults.journal_dir)},
        )
        faults.gateways.append(gateway)
        gateway.start()
        sdk = sdk_of(faults, gateway)
        started = time.monotonic()
        stalled = await read_stream(
            sdk,
            Read(),
            model=STALL_MODEL,
            messages=[{"role": "user", "content": "Hello"}],
            stream_options={"include_usage": True},
        )
        failed_after_s = time.monotonic() - started
        await sdk.close()
        assert proxy.stalled.is_set()
    assert isinstance(stalled.error, openai.APIError), stalled.error
    assert not isinstance(stalled.error, openai.APIStatusError)
    assert stalled.error.code == "llm_timeout"
    assert stalled.text
    # The between-tokens timeout ended it, not the total one.
    token_timeout_s = float(GATEWAY_ENV["SWITCHBOARD_LLM_TOKEN_TIMEOUT_S"])
    print(
        f"\nstalled upstream: the SDK raised {failed_after_s:.2f} s in (token timeout "
        f"{token_timeout_s} s, total {TOTAL_TIMEOUT_S} s)"
    )
    assert token_timeout_s <= failed_after_s < token_timeout_s + scaled(3)
    reply = (await rows_of(faults, stalled.conversation))[1]
    assert (reply["status"], reply["error_code"]) == ("failed", "llm_timeout")
    assert reply["content"] == stalled.text
    assert reply["prompt_tokens"] > 0
    assert reply["completion_tokens"] >= 1
    assert await faults.pending() == []


async def test_a_legacy_completion_cut_upstream_is_raised_and_stored_with_its_usage(
    door_faults: Faults,
) -> None:
    faults = door_faults
    gateway = faults.gateway()
    await faults.configure(gateway)
    sdk = sdk_of(faults, gateway)
    stream = await sdk.completions.create(model=CUT_MODEL, prompt="Once upon", stream=True)
    conversation = stream.response.headers["x-switchboard-conversation"]
    texts: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            texts.extend(choice.text for choice in chunk.choices)

    with pytest.raises(openai.APIError) as caught:
        await read()
    await sdk.close()
    text = "".join(texts)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert text
    reply = (await rows_of(faults, conversation))[1]
    assert reply["status"] == "failed"
    assert reply["content"] == text
    assert reply["prompt_tokens"] > 0
    assert reply["completion_tokens"] == CUT_AFTER
    assert await faults.pending() == []
