"""Chat and streaming against the simulator: results, what goes on the wire, usage."""

from __future__ import annotations

import re
import time

import httpx
import structlog

from functions.core.llm.client import LLMClient
from functions.core.llm.schemas import ChatDelta, ChatDone, ChatResult, StreamEvent
from functions.core.llm.transport import AiohttpTransport
from functions.simulator.text import tokenize
from tests.core.llm.conftest import (
    MODEL,
    TOKENS,
    Faults,
    MakeClient,
    chat_request,
    connections_to,
    llm_settings,
    sim_stats,
)
from tests.core.llm.scripted_server import ScriptedServer, http_response, sse_response
from tests.support.simulator import SimulatorProcess


async def collect(client: LLMClient, **fields: object) -> list[StreamEvent]:
    return [event async for event in client.stream_chat(chat_request(**fields))]


async def test_chat_returns_the_answer_and_where_it_came_from(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(fresh.base_url)
    result = await client.chat(chat_request())
    assert isinstance(result, ChatResult)
    assert result.content
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.completion_tokens == TOKENS
    assert result.model == MODEL
    assert result.upstream_id == f"127.0.0.1:{fresh.port}"
    assert result.upstream_url == fresh.base_url
    assert result.latency_ms > 0


async def test_stream_yields_deltas_then_one_done(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(fresh.base_url)
    events = await collect(client)
    deltas = [e for e in events if isinstance(e, ChatDelta)]
    done = events[-1]
    assert isinstance(done, ChatDone)
    # What arrives together is one delta: one per token at most, and the whole text.
    assert 1 <= len(deltas) <= TOKENS
    assert len(tokenize("".join(d.text for d in deltas))) == TOKENS
    assert all(isinstance(e, ChatDelta) for e in events[:-1])
    assert done.finish_reason == "stop"
    assert done.usage is not None
    assert done.usage.completion_tokens == TOKENS
    assert done.ttft_ms is not None
    assert done.model == MODEL
    # Streaming and not streaming give the same text for the same request.
    assert "".join(d.text for d in deltas) == (await client.chat(chat_request())).content
    assert client.stats().in_flight == 0


async def test_stream_is_not_buffered_and_measures_ttft(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-TTFT-Ms": "150", "X-Sim-ITL-Ms": "60", "X-Sim-Tokens": "6"})
    client = make_client(fresh.base_url)
    started = time.monotonic()
    arrivals: list[float] = []
    done: ChatDone | None = None
    async for event in client.stream_chat(chat_request()):
        if isinstance(event, ChatDelta):
            arrivals.append(time.monotonic() - started)
        else:
            done = event
    assert done is not None
    assert done.ttft_ms is not None
    assert 150 <= done.ttft_ms < 1000
    assert len(arrivals) == 6
    assert arrivals[0] < 0.15 + 0.2  # the first token did not wait for the rest
    assert arrivals[-1] - arrivals[0] >= 5 * 0.06 * 0.8


async def test_request_on_the_wire(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    request = chat_request(
        max_tokens=4,
        temperature=0.5,
        extra={"top_k": 5, "repetition_penalty": 1.1, "stream": False, "model": "x"},
    )
    result = await client.chat(request, request_id="req-123")
    assert result.request_id == "req-123"
    assert result.response_id == f"chatcmpl-{result.upstream_request_id}"
    sent = (await sim_stats(fresh))["last_chat_request"]
    body = sent["body"]
    assert body["model"] == MODEL  # extra cannot override a field the request sets
    assert body["stream"] is False
    assert "stream_options" not in body  # vLLM rejects it when not streaming
    assert (body["top_k"], body["repetition_penalty"], body["max_tokens"]) == (5, 1.1, 4)
    assert sent["headers"]["x-request-id"] == result.upstream_request_id
    assert sent["headers"]["content-type"] == "application/json"
    assert "authorization" not in sent["headers"]

    await collect(client, extra={"stream_options": {"include_usage": False}})
    body = (await sim_stats(fresh))["last_chat_request"]["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_request_id_defaults_to_the_bound_context(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(fresh.base_url)
    with structlog.contextvars.bound_contextvars(request_id="ctx-42"):
        result = await client.chat(chat_request())
        events = await collect(client)
    assert result.request_id == "ctx-42"
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert done.request_id == "ctx-42"
    assert done.response_id == f"chatcmpl-{done.upstream_request_id}"


async def test_the_upstream_never_sees_the_callers_request_id(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    """vLLM keys running requests by X-Request-Id: two tenants choosing the same id must
    not collide, so every call goes upstream under an id the gateway made."""
    client = make_client(fresh.base_url)
    sent: list[str] = []
    for _ in range(2):
        result = await client.chat(chat_request(), request_id="same-id-from-two-tenants")
        header = (await sim_stats(fresh))["last_chat_request"]["headers"]["x-request-id"]
        assert header == result.upstream_request_id
        sent.append(header)
    events = await collect(client)
    done = events[-1]
    assert isinstance(done, ChatDone)
    sent.append((await sim_stats(fresh))["last_chat_request"]["headers"]["x-request-id"])
    assert done.upstream_request_id == sent[-1]
    assert len(set(sent)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in sent)
    await client.chat(chat_request())  # no caller id at all: still one of ours
    assert re.fullmatch(
        r"[0-9a-f]{32}",
        (await sim_stats(fresh))["last_chat_request"]["headers"]["x-request-id"],
    )


async def test_a_request_without_model_goes_to_any_upstream(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(fresh.base_url)
    result = await client.chat(chat_request(model=None))
    assert result.model == MODEL  # vLLM answers with its first served model
    assert "model" not in (await sim_stats(fresh))["last_chat_request"]["body"]


FINISH = b'{"model":"old","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}'
ROLE = b'{"model":"old","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
HEL = b'{"model":"old","choices":[{"index":0,"delta":{"content":"Hel"}}]}'


async def test_usage_absent_is_reported_as_none(make_client: MakeClient) -> None:
    # An upstream that ignores stream_options (or a non-streaming body without usage).
    async with ScriptedServer(sse_response(ROLE, HEL, FINISH, b"[DONE]")) as server:
        client = make_client(server.base_url)
        events = await collect(client, model=None)
    assert "".join(e.text for e in events if isinstance(e, ChatDelta)) == "Hello"
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert (done.finish_reason, done.usage, done.model) == ("stop", None, "old")

    body = b'{"model":"old","choices":[{"message":{"content":"Hi"},"finish_reason":"length"}]}'
    async with ScriptedServer(http_response(200, body)) as server:
        result = await make_client(server.base_url).chat(chat_request(model=None))
    assert (result.content, result.finish_reason, result.usage) == ("Hi", "length", None)


async def test_a_stream_cut_after_the_finish_chunk_still_completes(make_client: MakeClient) -> None:
    async with ScriptedServer(sse_response(ROLE, HEL, FINISH)) as server:
        events = await collect(make_client(server.base_url), model=None)
    done = events[-1]
    assert isinstance(done, ChatDone)
    assert (done.finish_reason, done.usage) == ("stop", None)


async def test_works_over_httpx_default_transport_too(fresh: SimulatorProcess) -> None:
    settings = llm_settings(fresh.base_url)
    async with httpx.AsyncClient() as http:
        async with LLMClient(http, settings) as client:
            assert (await client.chat(chat_request())).content
            assert isinstance((await collect(client))[-1], ChatDone)
        assert not http.is_closed  # a caller's own client is left open


async def test_from_settings_owns_and_closes_its_http_client(fresh: SimulatorProcess) -> None:
    client = LLMClient.from_settings(llm_settings(fresh.base_url))
    async with client:
        assert (await client.chat(chat_request())).content
    assert client._http.is_closed
    assert isinstance(client._http._transport, AiohttpTransport)


async def test_streams_leave_their_connection_reusable(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(fresh.base_url)
    await client.chat(chat_request())
    for _ in range(4):
        await collect(client)
        await client.chat(chat_request())
    # The end of each stream is read after [DONE], so the same connection serves them all.
    assert connections_to(fresh.port) == 1
