"""Contract §3: the SSE chunk sequence, framing, usage reporting and timing."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.simulator.conftest import MODEL, TOKENS, chat_body, parse_sse

ROLE_CHUNK_KEYS = ["id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text"]


async def stream(
    client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any
) -> tuple[httpx.Response, list[Any]]:
    response = await client.post("/v1/chat/completions", json={**body, "stream": True}, **kwargs)
    assert response.status_code == 200, response.text
    return response, parse_sse(response.content)


async def test_chunk_sequence_without_usage(client: httpx.AsyncClient) -> None:
    response, events = await stream(client, chat_body(max_tokens=4))
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    assert events[-1] == "[DONE]"
    role, *contents, done = events
    assert done == "[DONE]"
    assert list(role) == ROLE_CHUNK_KEYS
    assert role["object"] == "chat.completion.chunk"
    assert role["model"] == MODEL
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert role["prompt_token_ids"] is None
    assert role["prompt_text"] is None
    assert len(contents) == 4  # one token per chunk, no usage chunk
    for chunk in contents[:-1]:
        assert list(chunk) == ["id", "object", "created", "model", "choices"]
        (choice,) = chunk["choices"]
        assert list(choice) == ["index", "delta", "logprobs", "finish_reason", "token_ids"]
        assert list(choice["delta"]) == ["content"]
        assert choice["finish_reason"] is None
    (last,) = contents[-1]["choices"]
    assert list(last) == ["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"]
    assert last["finish_reason"] == "length"
    assert last["stop_reason"] is None
    assert last["delta"]["content"]  # the finish chunk carries a token too
    assert len({event["id"] for event in events[:-1]}) == 1
    assert len({event["created"] for event in events[:-1]}) == 1


async def test_usage_chunk_only_with_include_usage(client: httpx.AsyncClient) -> None:
    _, events = await stream(client, chat_body(stream_options={"include_usage": True}))
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert list(usage_chunk) == ["id", "object", "created", "model", "choices", "usage"]
    usage = usage_chunk["usage"]
    assert list(usage) == ["prompt_tokens", "total_tokens", "completion_tokens"]  # exclude_none
    assert usage["completion_tokens"] == TOKENS == len(events) - 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + TOKENS
    assert events[-3]["choices"][0]["finish_reason"] == "stop"

    for off in (False, None):  # an explicit null is no usage, as vLLM reads it
        _, without = await stream(client, chat_body(stream_options={"include_usage": off}))
        assert all("usage" not in event for event in without[:-1])
        assert len(without) == TOKENS + 2


async def test_empty_stream_options_mean_include_usage(client: httpx.AsyncClient) -> None:
    # vLLM's StreamOptions.include_usage defaults to True.
    _, events = await stream(client, chat_body(stream_options={}))
    assert events[-2]["choices"] == []
    assert "usage" in events[-2]


async def test_continuous_usage_stats_on_every_chunk(client: httpx.AsyncClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    _, events = await stream(client, chat_body(max_tokens=3, stream_options=options))
    prompt = events[-2]["usage"]["prompt_tokens"]
    produced = [event["usage"]["completion_tokens"] for event in events[:-1]]
    assert produced == [0, 1, 2, 3, 3]
    for event in events[:-1]:
        assert event["usage"]["prompt_tokens"] == prompt
        assert event["usage"]["total_tokens"] == prompt + event["usage"]["completion_tokens"]


async def test_n_choices_each_get_a_role_chunk_and_interleave(client: httpx.AsyncClient) -> None:
    _, events = await stream(
        client, chat_body(n=2, max_tokens=3, stream_options={"include_usage": True})
    )
    per_event = [event["choices"] for event in events[:-2]]
    assert all(len(choices) == 1 for choices in per_event)  # one choice per chunk
    indexes = [choices[0]["index"] for choices in per_event]
    assert indexes == [0, 1, 0, 1, 0, 1, 0, 1]
    assert (
        per_event[0][0]["delta"] == per_event[1][0]["delta"] == {"role": "assistant", "content": ""}
    )
    finishes = [choices[0]["finish_reason"] for choices in per_event]
    assert finishes == [None] * 6 + ["length", "length"]
    assert events[-2]["usage"]["completion_tokens"] == 6


async def test_role_chunk_waits_for_ttft_and_tokens_for_itl(client: httpx.AsyncClient) -> None:
    headers = {"X-Sim-TTFT-Ms": "300", "X-Sim-ITL-Ms": "60", "X-Sim-Tokens": "4"}
    started = time.perf_counter()
    arrivals: list[tuple[float, bytes]] = []
    async with client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True), headers=headers
    ) as response:
        headers_at = time.perf_counter() - started
        async for line in response.aiter_lines():
            if line:
                arrivals.append((time.perf_counter() - started, line.encode()))
    # Headers first (Starlette starts the response at once), the role chunk after the TTFT.
    assert headers_at < 0.25
    role_at = arrivals[0][0]
    assert b'"role":"assistant"' in arrivals[0][1]
    assert 0.28 <= role_at < 1.0
    last_token_at = arrivals[-2][0]
    assert last_token_at - role_at >= 3 * 0.06 * 0.9  # three gaps between four tokens
    assert arrivals[-1][1] == b"data: [DONE]"


async def test_non_streaming_waits_for_the_whole_generation(client: httpx.AsyncClient) -> None:
    headers = {"X-Sim-TTFT-Ms": "100", "X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "5"}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert 0.3 * 0.9 <= elapsed < 1.5  # 100 ms + 4 gaps of 50 ms


async def test_n_choices_of_different_lengths_interleave_until_each_ends(
    client: httpx.AsyncClient,
) -> None:
    # A stop string ends the choices at different tokens; each streamed choice is still its
    # non-streamed twin, and a finished choice sends nothing more.
    body = chat_body(n=4, seed=11, stop=[" the", "!"])
    whole = (await client.post("/v1/chat/completions", json=body)).json()["choices"]
    lengths = {len(choice["message"]["content"]) for choice in whole}
    assert len(lengths) > 1, whole
    _, events = await stream(client, body)
    texts: dict[int, str] = {}
    finished: set[int] = set()
    for event in events[:-1]:
        [choice] = event["choices"]
        index = choice["index"]
        assert index not in finished
        texts[index] = texts.get(index, "") + choice["delta"].get("content", "")
        if choice["finish_reason"] is not None:
            finished.add(index)
            assert choice["finish_reason"] == whole[index]["finish_reason"]
    assert finished == {0, 1, 2, 3}
    assert texts == {c["index"]: c["message"]["content"] for c in whole}
