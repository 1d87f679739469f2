"""Tool calls: vLLM's shape, streamed (``delta.tool_calls`` by ``index``: id, type and name
once, then the arguments in fragments) and not (``message.tool_calls``, content null)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.simulator.conftest import chat_body, parse_sse

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
OTHER = {"type": "function", "function": {"name": "get_time"}}
ASK = "What is the weather in Seoul?"


async def chat(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body)


async def test_a_reply_to_a_user_turn_calls_the_first_tool(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body(ASK, tools=[WEATHER, OTHER]))
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("chatcmpl-tool-")
    assert (call["type"], call["function"]["name"]) == ("function", "get_weather")
    assert json.loads(call["function"]["arguments"]) == {"city": ASK}
    # Deterministic, as every simulated reply.
    again = (await chat(client, chat_body(ASK, tools=[WEATHER, OTHER]))).json()
    assert again["choices"][0]["message"]["tool_calls"] == [call]


async def test_the_streamed_call_merges_into_the_same_call(client: httpx.AsyncClient) -> None:
    body = chat_body(ASK, tools=[WEATHER], tool_choice="auto")
    whole = (await chat(client, body)).json()["choices"][0]["message"]["tool_calls"][0]
    response = await chat(client, {**body, "stream": True})
    events = parse_sse(response.content)
    assert events[-1] == "[DONE]"
    deltas = [
        event["choices"][0]["delta"]
        for event in events[:-1]
        if event["choices"] and "tool_calls" in event["choices"][0]["delta"]
    ]
    first, *rest = (delta["tool_calls"] for delta in deltas)
    assert first == [
        {
            "id": whole["id"],
            "type": "function",
            "index": 0,
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    assert len(rest) > 2  # the arguments arrive in fragments
    assert all(list(call) == ["index", "function"] for [call] in rest)
    assert (
        "".join(call["function"]["arguments"] for [call] in rest) == whole["function"]["arguments"]
    )
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "tool_calls"
    assert not any(delta.get("content") for delta in deltas)


async def test_a_named_tool_is_called_and_ends_with_stop(client: httpx.AsyncClient) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    response = await chat(client, chat_body(ASK, tools=[WEATHER, OTHER], tool_choice=named))
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"]) == {"input": ASK}

    missing = {"type": "function", "function": {"name": "nope"}}
    refused = await chat(client, chat_body(ASK, tools=[WEATHER], tool_choice=missing))
    assert refused.status_code == 400
    assert "nope" in refused.json()["error"]["message"]


async def test_a_tool_answer_or_tool_choice_none_gets_text(client: httpx.AsyncClient) -> None:
    call = {
        "id": "chatcmpl-tool-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'},
    }
    answered = {
        "model": chat_body()["model"],
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "chatcmpl-tool-1", "content": "Sunny, 21°C"},
        ],
    }
    for body in (answered, chat_body(ASK, tools=[WEATHER], tool_choice="none")):
        choice = (await chat(client, body)).json()["choices"][0]
        assert choice["message"]["tool_calls"] == []
        assert choice["message"]["content"]
        assert choice["finish_reason"] in ("stop", "length")


async def test_max_tokens_cuts_the_arguments(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body(ASK, tools=[WEATHER], max_tokens=3))
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    arguments = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert len(arguments) < len(json.dumps({"city": ASK}))
    assert response.json()["usage"]["completion_tokens"] == 3


def _successes(metrics: str, reason: str) -> float:
    """vLLM's successes for ``reason``, summed over the served models."""
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("vllm:request_success_total") and f'finished_reason="{reason}"' in line
    ]
    assert lines, metrics
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def test_a_tool_call_counts_as_the_engines_stop(client: httpx.AsyncClient) -> None:
    # vLLM's engine finishes a tool call with "stop"; "tool_calls" is the API's name for it.
    # Counting it under its own name once broke the simulator's connection after the answer.
    before = _successes((await client.get("/metrics")).text, "stop")
    for stream in (False, True):
        response = await chat(client, chat_body(ASK, tools=[WEATHER], stream=stream))
        assert response.status_code == 200
    after = _successes((await client.get("/metrics")).text, "stop")
    assert after - before == 2
