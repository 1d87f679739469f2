"""Chat ``logprobs``/``top_logprobs`` in vLLM's shape (``ChatCompletionLogProbs``): one entry
per generated token with its bytes and its ranked alternatives, streamed as each chunk's
tokens and not; validated as vLLM's ``check_logprobs`` and engine limit do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.simulator.conftest import chat_body, parse_sse

ASK = "Tell me about 서울 and the sea 🌊"


async def chat(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body)


async def test_each_token_gets_its_logprob_bytes_and_alternatives(
    client: httpx.AsyncClient,
) -> None:
    body = (await chat(client, chat_body(ASK, logprobs=True, top_logprobs=3))).json()
    [choice] = body["choices"]
    entries = choice["logprobs"]["content"]
    assert list(choice["logprobs"]) == ["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    assert "".join(entry["token"] for entry in entries) == choice["message"]["content"]
    for entry in entries:
        assert list(entry) == ["token", "logprob", "bytes", "top_logprobs"]
        assert entry["bytes"] == list(entry["token"].encode())
        assert -3 < entry["logprob"] <= 0
        ranked = entry["top_logprobs"]
        assert len(ranked) == 3
        assert ranked[0] == {k: entry[k] for k in ("token", "logprob", "bytes")}
        assert [r["logprob"] for r in ranked] == sorted(
            (r["logprob"] for r in ranked), reverse=True
        )
        assert len({r["token"] for r in ranked}) == 3


async def test_logprobs_without_top_and_without_logprobs(client: httpx.AsyncClient) -> None:
    bare = (await chat(client, chat_body(ASK, logprobs=True))).json()["choices"][0]
    assert all(entry["top_logprobs"] == [] for entry in bare["logprobs"]["content"])
    off = (await chat(client, chat_body(ASK))).json()["choices"][0]
    assert off["logprobs"] is None


async def test_streamed_logprobs_are_the_whole_replys(client: httpx.AsyncClient) -> None:
    body = chat_body(ASK, logprobs=True, top_logprobs=2, n=2, seed=4)
    whole = (await chat(client, body)).json()["choices"]
    events = parse_sse((await chat(client, {**body, "stream": True})).content)
    streamed: dict[int, list[Any]] = {0: [], 1: []}
    for event in events[:-1]:
        [choice] = event["choices"]
        if "role" in choice["delta"]:
            assert choice["logprobs"] is None
            continue
        entries = choice["logprobs"]["content"]
        assert [entry["token"] for entry in entries] == [choice["delta"]["content"]]
        streamed[choice["index"]] += entries
    for choice in whole:
        assert streamed[choice["index"]] == choice["logprobs"]["content"]
    # Different choices are different samples.
    assert streamed[0] != streamed[1]


async def test_tool_call_arguments_carry_logprobs(client: httpx.AsyncClient) -> None:
    tool = {"type": "function", "function": {"name": "lookup"}}
    body = chat_body(ASK, tools=[tool], logprobs=True)
    choice = (await chat(client, body)).json()["choices"][0]
    arguments = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert "".join(e["token"] for e in choice["logprobs"]["content"]) == arguments


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        (
            {"top_logprobs": 2},
            "when using `top_logprobs`, `logprobs` must be set to true.",
            "top_logprobs",
        ),
        (
            {"logprobs": True, "top_logprobs": -2},
            "`top_logprobs` must be a positive value or -1.",
            "top_logprobs",
        ),
        (
            {"logprobs": True, "top_logprobs": 21},
            "Requested sample logprobs of 21, which is greater than max allowed: 20",
            "logprobs",
        ),
        (
            {"logprobs": True, "top_logprobs": -1},
            "Requested sample logprobs of 32000, which is greater than max allowed: 20",
            "logprobs",
        ),
    ],
)
async def test_bad_logprobs_are_400(
    client: httpx.AsyncClient, extra: dict[str, Any], message: str, param: str
) -> None:
    response = await chat(client, chat_body(ASK, **extra))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(message)
    assert (error["param"], error["code"]) == (param, 400)
