"""The door's SSE stream read byte by byte with raw httpx: framing, pass-through, a client
that leaves mid-stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.functions.openai.conftest import Door
from tests.support.timing import scaled

HELLO = [{"role": "user", "content": "Hello"}]


async def _stream_bytes(door: Door, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    async with door.api.alice.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        return dict(response.headers), raw


async def test_sse_framing_byte_by_byte(door: Door) -> None:
    headers, raw = await _stream_bytes(
        door, {"model": "sim-model", "messages": HELLO, "stream": True}
    )
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-request-id"]
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    # Every event is one `data: ` line: no `event:` names, no comments, no CRs.
    assert all(event.startswith(b"data: ") and b"\n" not in event for event in events)
    assert b"\r" not in raw
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # No usage anywhere: the client did not ask (vLLM was asked, and it was stripped).
    assert all("usage" not in chunk for chunk in chunks)
    reply = (await door.messages(headers["x-switchboard-conversation"]))[1]
    assert reply["usage"]["completion_tokens"] == len(chunks) - 1


async def test_chunks_the_client_asked_for_are_vllms_bytes(door: Door) -> None:
    _, raw = await _stream_bytes(
        door,
        {
            "model": "sim-model",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    events = raw.split(b"\n\n")[:-2]
    chunks = [json.loads(event[6:]) for event in events]
    assert all("usage" in chunk for chunk in chunks)
    # Relayed as vLLM wrote them: compact JSON, exactly re-encodable in the same order.
    for event, chunk in zip(events, chunks, strict=True):
        assert event[6:] == json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 2


async def test_empty_stream_options_ask_for_the_usage_chunk_as_on_vllm(door: Door) -> None:
    _, raw = await _stream_bytes(
        door, {"model": "sim-model", "messages": HELLO, "stream": True, "stream_options": {}}
    )
    chunks = [json.loads(event[6:]) for event in raw.split(b"\n\n")[:-2]]
    assert [("usage" in chunk) for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["choices"] == []


async def test_a_client_that_leaves_aborts_vllm_and_the_reply_is_cancelled(door: Door) -> None:
    slow = door.simulators["slow-model"]
    await slow.fresh()
    received = 0
    async with door.api.alice.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "slow-model", "messages": HELLO, "stream": True},
    ) as response:
        conversation = response.headers["x-switchboard-conversation"]
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                received += 1
                if received == 5:
                    break  # leaving the block closes the connection mid-stream
    stats = await slow.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    assert stats["aborted"] == 1
    deadline = asyncio.get_running_loop().time() + scaled(5)
    while True:
        reply = (await door.messages(conversation))[1]
        if reply["status"] != "pending" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert reply["status"] == "cancelled"
    assert reply["error"]["code"] == "cancelled"
    assert reply["content"]  # what was relayed before the client left
    # Its exact usage up to the cut (vLLM counted every chunk; slow-model writes 60
    # tokens): at least the tokens relayed (the first chunk is the role, no token).
    assert reply["usage"]["prompt_tokens"] > 0
    assert received - 1 <= reply["usage"]["completion_tokens"] < 60
