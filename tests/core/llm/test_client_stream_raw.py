"""``stream_raw``: every upstream SSE event byte for byte, read once, under the same rules.

Byte-exact and shape checks use the scripted server (it sends exactly the bytes a test
gives it); timeouts, retries, faults and aborts use the simulator, as the other client tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMError, LLMTimeoutError
from functions.core.llm.schemas import (
    ChatDelta,
    ChatDone,
    ChatRequest,
    RawStreamEvent,
    UpstreamEvent,
    Usage,
)
from tests.core.llm.conftest import (
    LONG_STREAM,
    MODEL,
    TOKENS,
    Faults,
    MakeClient,
    assert_aborted,
    chat_request,
    connections_to,
    sim_stats,
    wait_for_stats,
)
from tests.core.llm.scripted_server import ScriptedServer, closed_port_url, sse_response
from tests.support.simulator import SimulatorProcess

HEAD = b'"id":"chatcmpl-raw1","object":"chat.completion.chunk","created":1700000000,"model":"old"'
ROLE = (
    b"{" + HEAD + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}'
)
# Spaces, raw UTF-8 and a \u escape: re-encoding the JSON would change every one of them.
CAFE = (
    '{"id": "chatcmpl-raw1", "model": "old", "choices": [{"index": 0, '
    '"delta": {"content": "café \\u00e9"}, "finish_reason": null}]}'
).encode()
# A content chunk that also carries usage, as with continuous_usage_stats.
FINISH = (
    b"{" + HEAD + b',"choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,'
    b'"finish_reason":"stop","stop_reason":null,"token_ids":null}],'
    b'"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}'
)
USAGE = (
    b"{" + HEAD + b',"choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,'
    b'"completion_tokens":2}}'
)
HEL = b"{" + HEAD + b',"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}'
ERROR = b'{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}'


def tool_chunk(tool_calls: str, finish_reason: str = "null") -> bytes:
    return (
        b"{"
        + HEAD
        + b',"choices":[{"index":0,"delta":{"tool_calls":'
        + tool_calls.encode()
        + b'},"logprobs":null,"finish_reason":'
        + finish_reason.encode()
        + b"}]}"
    )


TOOL_CALL = [
    tool_chunk(
        '[{"id":"chatcmpl-tool-1","type":"function","index":0,'
        '"function":{"name":"get_weather","arguments":""}}]'
    ),
    tool_chunk('[{"index":0,"function":{"arguments":"{\\"city\\": "}}]'),
    tool_chunk('[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]', '"tool_calls"'),
]


def reasoning_chunk(delta: str) -> bytes:
    return b"{" + HEAD + b',"choices":[{"index":0,"delta":' + delta.encode() + b"}]}"


async def collect_raw(
    client: LLMClient, request: ChatRequest, *, request_id: str | None = None
) -> tuple[list[UpstreamEvent], ChatDone]:
    """Every item of a raw stream; checks that exactly one ChatDone ends it."""
    items = [item async for item in client.stream_raw(request, request_id=request_id)]
    done = items.pop()
    assert isinstance(done, ChatDone)
    events = [item for item in items if isinstance(item, UpstreamEvent)]
    assert events == items
    return events, done


async def read_raw(events: AsyncIterator[RawStreamEvent], received: list[UpstreamEvent]) -> None:
    """Consume a raw stream that is expected to fail, keeping what arrived first."""
    async for event in events:
        assert isinstance(event, UpstreamEvent), "the stream finished instead of failing"
        received.append(event)


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


async def test_each_event_is_passed_on_byte_for_byte_and_read(make_client: MakeClient) -> None:
    async with ScriptedServer(sse_response(ROLE, CAFE, FINISH, USAGE, b"[DONE]")) as server:
        client = make_client(server.base_url)
        events, done = await collect_raw(client, chat_request(model=None), request_id="req-raw")
    assert server.response is not None
    assert [e.raw for e in events] == [ROLE, CAFE, FINISH, USAGE]
    # Framing the payloads again gives exactly the body the upstream sent.
    forwarded = b"".join(b"data: " + e.raw + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    assert forwarded == body_of(server.response)

    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    assert [e.text for e in events] == ["", "café é", "!", ""]
    assert [e.finish_reason for e in events] == [None, None, "stop", None]
    assert [e.usage for e in events] == [None, None, usage, usage]
    assert [e.usage_only for e in events] == [False, False, False, True]
    assert all(e.tool_calls is None and e.reasoning is None for e in events)

    assert (done.finish_reason, done.usage, done.model) == ("stop", usage, "old")
    assert (done.request_id, done.response_id) == ("req-raw", "chatcmpl-raw1")
    assert (done.upstream_id, done.upstream_url) == (f"127.0.0.1:{server.port}", server.base_url)
    assert done.ttft_ms is not None
    assert done.latency_ms >= done.ttft_ms
    assert client.stats().in_flight == 0
    sent = msgspec.json.decode(body_of(server.requests[0]))
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})


async def test_tool_call_deltas_are_kept_as_sent(make_client: MakeClient) -> None:
    script = sse_response(ROLE, *TOOL_CALL, USAGE, b"[DONE]")
    async with ScriptedServer(script) as server:
        client = make_client(server.base_url)
        events, done = await collect_raw(client, chat_request(model=None))
        chat_events = [e async for e in client.stream_chat(chat_request(model=None))]

    sent: list[Any] = [
        msgspec.json.decode(chunk)["choices"][0]["delta"]["tool_calls"] for chunk in TOOL_CALL
    ]
    assert [e.tool_calls for e in events] == [None, *sent, None]
    assert sent[0][0]["function"]["name"] == "get_weather"
    arguments = "".join(
        call["function"]["arguments"] for e in events for call in e.tool_calls or []
    )
    assert msgspec.json.decode(arguments) == {"city": "Paris"}
    assert all(e.text == "" for e in events)
    assert events[-2].finish_reason == "tool_calls"
    assert done.finish_reason == "tool_calls"
    # stream_chat is unchanged: no text, so no deltas, and the same ending.
    assert len(chat_events) == 1
    assert isinstance(chat_events[0], ChatDone)
    assert chat_events[0].finish_reason == "tool_calls"


async def test_reasoning_in_every_vllm_spelling(make_client: MakeClient) -> None:
    script = sse_response(
        ROLE,
        reasoning_chunk('{"reasoning_content":"Let me"}'),  # vLLM <= 0.11
        reasoning_chunk('{"reasoning":" think","reasoning_content":" think"}'),  # 0.12-0.15
        reasoning_chunk('{"reasoning":"."}'),  # 0.16 on
        reasoning_chunk('{"content":"42"}'),
        FINISH,
        b"[DONE]",
    )
    async with ScriptedServer(script) as server:
        client = make_client(server.base_url)
        events, _ = await collect_raw(client, chat_request(model=None))
        chat_events = [e async for e in client.stream_chat(chat_request(model=None))]
    assert [e.reasoning for e in events] == [None, "Let me", " think", ".", None, None]
    assert [e.text for e in events] == ["", "", "", "", "42", "!"]
    # Reasoning is not answer text: stream_chat still yields only the content (what
    # arrived together as one delta).
    assert "".join(e.text for e in chat_events if isinstance(e, ChatDelta)) == "42!"


async def test_the_simulators_stream(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    events, done = await collect_raw(client, chat_request())
    chunks = [msgspec.json.decode(e.raw) for e in events]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert [e.text for e in events if e.text] == [
        chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-1]
    ]
    assert len([e for e in events if e.text]) == TOKENS
    usage_chunk = events[-1]
    assert usage_chunk.usage_only
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == TOKENS
    assert usage_chunk.usage == done.usage
    assert [e.finish_reason for e in events].count("stop") == 1
    assert (done.finish_reason, done.model) == ("stop", MODEL)
    # The same request streamed for Switchboard's own use gives the same text.
    chat_texts = [
        e.text async for e in client.stream_chat(chat_request()) if isinstance(e, ChatDelta)
    ]
    assert "".join(e.text for e in events) == "".join(chat_texts)
    # The end of each stream is read after [DONE], so the connection is reused.
    await collect_raw(client, chat_request())
    assert connections_to(fresh.port) == 1
    assert client.stats().in_flight == 0


async def test_an_error_event_is_raised_after_the_events_before_it(
    make_client: MakeClient,
) -> None:
    # All in one write: the events before the error arrive in the same read as it.
    async with ScriptedServer(sse_response(ROLE, HEL, ERROR, b"[DONE]")) as server:
        client = make_client(server.base_url)
        received: list[UpstreamEvent] = []
        with pytest.raises(LLMError) as info:
            await read_raw(client.stream_raw(chat_request(model=None)), received)
    assert type(info.value) is LLMError
    assert [e.raw for e in received] == [ROLE, HEL]
    assert info.value.partial_text == "Hel"
    assert info.value.details["upstream_code"] == 500
    assert "boom" in str(info.value)
    assert client.stats().in_flight == 0


async def test_an_error_event_from_the_simulator(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "cut:3"})
    client = make_client(fresh.base_url)
    received: list[UpstreamEvent] = []
    with pytest.raises(LLMError) as info:
        await read_raw(client.stream_raw(chat_request()), received)
    assert type(info.value) is LLMError
    assert len([e for e in received if e.text]) == 3
    assert info.value.partial_text == "".join(e.text for e in received)
    assert info.value.details["upstream_code"] == 500
    assert client.stats().in_flight == 0


async def test_a_cut_stream(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "drop:2"})
    client = make_client(fresh.base_url)
    received: list[UpstreamEvent] = []
    with pytest.raises(LLMError) as info:
        await read_raw(client.stream_raw(chat_request()), received)
    assert len([e for e in received if e.text]) == 2
    assert info.value.partial_text == "".join(e.text for e in received)
    assert client.stats().in_flight == 0

    # Closed before the finish chunk, without [DONE]: the answer is incomplete.
    async with ScriptedServer(sse_response(ROLE, HEL)) as server:
        received = []
        with pytest.raises(LLMError) as info:
            await read_raw(
                make_client(server.base_url).stream_raw(chat_request(model=None)), received
            )
    assert "ended before the answer did" in str(info.value)
    assert [e.raw for e in received] == [ROLE, HEL]
    assert info.value.partial_text == "Hel"

    # Closed after the finish chunk: the answer is whole, so the stream still ends normally.
    async with ScriptedServer(sse_response(ROLE, HEL, FINISH)) as server:
        events, done = await collect_raw(make_client(server.base_url), chat_request(model=None))
    assert [e.raw for e in events] == [ROLE, HEL, FINISH]
    assert done.finish_reason == "stop"


async def test_first_token_timeout(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-TTFT-Ms": "3000"})
    client = make_client(fresh.base_url, llm_first_token_timeout_s=0.2)
    with pytest.raises(LLMTimeoutError) as info:
        await anext(client.stream_raw(chat_request()))
    assert (info.value.phase, info.value.partial_text) == ("first_token", "")
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0 and s["aborted"] == 1)
    assert client.stats().in_flight == 0


async def test_between_tokens_timeout(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "stall:3"})
    client = make_client(fresh.base_url, llm_token_timeout_s=0.2)
    received: list[UpstreamEvent] = []
    with pytest.raises(LLMTimeoutError) as info:
        await read_raw(client.stream_raw(chat_request()), received)
    assert info.value.phase == "between_tokens"
    assert len([e for e in received if e.text]) == 3
    assert info.value.partial_text == "".join(e.text for e in received)
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0)
    assert client.stats().in_flight == 0


async def test_retried_only_before_output(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "503"}, times=2)
    client = make_client(fresh.base_url)
    events, _ = await collect_raw(client, chat_request())
    assert events[-1].usage_only
    assert (await sim_stats(fresh))["faults"] == {"503": 2}
    assert client.stats().retries_total == 2

    # Once output has begun, a broken stream is not retried.
    faults.add({"X-Sim-Fault": "drop:2"}, times=1)
    with pytest.raises(LLMError):
        await read_raw(client.stream_raw(chat_request()), [])
    assert client.stats().retries_total == 2
    assert (await sim_stats(fresh))["faults"] == {"503": 2, "drop": 1}


async def test_a_refused_connection_is_retried_on_another_upstream(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(closed_port_url(), fresh.base_url, llm_eject_after_failures=10)
    for _ in range(3):
        _, done = await collect_raw(client, chat_request(model=None))
        assert done.upstream_url == fresh.base_url
    dead = client.stats().upstreams[0]
    assert client.stats().retries_total == dead.connect_failures_total >= 1


async def test_aclose_aborts_the_upstream(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    events = client.stream_raw(chat_request())
    assert isinstance(await anext(events), UpstreamEvent)
    assert isinstance(await anext(events), UpstreamEvent)
    assert client.stats().in_flight == 1
    await events.aclose()
    await assert_aborted(fresh, client)


async def test_breaking_out_of_aclosing_aborts_the_upstream(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    async with contextlib.aclosing(client.stream_raw(chat_request())) as events:
        async for _ in events:
            break
    await assert_aborted(fresh, client)


async def test_cancelling_the_consumer_aborts_the_upstream(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add(LONG_STREAM)
    client = make_client(fresh.base_url)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream_raw(chat_request()):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_aborted(fresh, client)
