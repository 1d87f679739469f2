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


def _merge_streamed_calls(events: list[Any]) -> dict[int, dict[str, str]]:
    """The calls a client assembles from ``delta.tool_calls``, keyed by their ``index``."""
    calls: dict[int, dict[str, str]] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            for delta in choice["delta"].get("tool_calls", ()):
                call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                if "id" in delta:
                    assert not call["id"], "a call's header is sent once"
                    call["id"] = delta["id"]
                    call["name"] = delta["function"]["name"]
                call["arguments"] += delta["function"]["arguments"]
    return calls


async def test_every_tool_the_user_names_is_called_in_parallel(client: httpx.AsyncClient) -> None:
    ask = "Call get_time, then get_weather for Seoul"
    body = chat_body(ask, tools=[WEATHER, OTHER])
    choice = (await chat(client, body)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    # In the order offered, each with its own id and its own arguments.
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in calls}) == 2
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": ask},
        {"input": ask},
    ]

    events = parse_sse((await chat(client, {**body, "stream": True})).content)
    merged = _merge_streamed_calls(events)
    assert sorted(merged) == [0, 1]
    assert [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in calls
    ] == [merged[0], merged[1]]
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "tool_calls"


async def test_parallel_tool_calls_false_makes_one_call(client: httpx.AsyncClient) -> None:
    body = chat_body("get_time and get_weather", tools=[WEATHER, OTHER], parallel_tool_calls=False)
    for stream in (False, True):
        response = await chat(client, {**body, "stream": stream})
        if stream:
            merged = _merge_streamed_calls(parse_sse(response.content))
            assert [call["name"] for call in merged.values()] == ["get_weather"]
        else:
            calls = response.json()["choices"][0]["message"]["tool_calls"]
            assert [call["function"]["name"] for call in calls] == ["get_weather"]


async def test_required_calls_even_after_a_tool_answer(client: httpx.AsyncClient) -> None:
    body = {
        "model": chat_body()["model"],
        "tools": [WEATHER],
        "tool_choice": "required",
        "messages": [
            {"role": "user", "content": ASK},
            {"role": "tool", "tool_call_id": "chatcmpl-tool-1", "content": "Sunny"},
        ],
    }
    choice = (await chat(client, body)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    # vLLM's guided path (required, named) answers "" beside the calls; auto answers null.
    assert choice["message"]["content"] == ""
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]


async def test_a_named_choice_calls_only_that_tool_even_when_others_are_named(
    client: httpx.AsyncClient,
) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    body = chat_body("get_weather and get_time", tools=[WEATHER, OTHER], tool_choice=named)
    choice = (await chat(client, body)).json()["choices"][0]
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_time"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == ""


async def test_tool_choice_is_validated_as_vllm_does(client: httpx.AsyncClient) -> None:
    cases = [
        (chat_body(ASK, tool_choice="auto"), "When using `tool_choice`, `tools` must be set."),
        (
            chat_body(ASK, tools=[WEATHER], tool_choice="sometimes"),
            "Invalid value for `tool_choice`: sometimes!",
        ),
    ]
    for body, message in cases:
        response = await chat(client, body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["message"].startswith(message)
        assert (error["param"], error["code"]) == ("tool_choice", 400)


async def test_n_choices_each_make_their_calls(client: httpx.AsyncClient) -> None:
    body = chat_body(ASK, tools=[WEATHER], n=2)
    choices = (await chat(client, body)).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    ids = [c["message"]["tool_calls"][0]["id"] for c in choices]
    assert len(set(ids)) == 2
    events = parse_sse((await chat(client, {**body, "stream": True})).content)
    by_choice: dict[int, list[Any]] = {0: [], 1: []}
    for event in events[:-1]:
        for choice in event["choices"]:
            by_choice[choice["index"]].append(event)
    for index, choice in enumerate(choices):
        [merged] = _merge_streamed_calls([*by_choice[index], "[DONE]"]).values()
        call = choice["message"]["tool_calls"][0]
        assert (merged["id"], merged["arguments"]) == (call["id"], call["function"]["arguments"])
