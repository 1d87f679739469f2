"""``chat.completions.create`` through the door with the official SDK: answers, usage,
configurations, tools and content parts, and what each exchange stored."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.functions.openai.conftest import Door

HELLO = [{"role": "user", "content": "Hello there"}]


async def test_non_streamed_answer_is_stored_with_its_usage(door: Door) -> None:
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason in ("stop", "length")
    text = completion.choices[0].message.content
    assert text
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion._request_id == raw.headers["x-request-id"]
    conversation = raw.headers["x-switchboard-conversation"]

    stored = await door.messages(conversation)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == "Hello there"
    assert stored[0]["id"] == raw.headers["x-switchboard-user-message-id"]
    reply = stored[1]
    assert reply["id"] == raw.headers["x-switchboard-reply-id"]
    assert reply["status"] == "complete"
    assert reply["content"] == text
    assert reply["usage"] == completion.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    )
    assert reply["finish_reason"] == completion.choices[0].finish_reason


async def test_streamed_without_stream_options_has_no_usage_but_stores_it(door: Door) -> None:
    stream = await door.alice.chat.completions.create(
        model="sim-model", messages=HELLO, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    conversation = stream.response.headers["x-switchboard-conversation"]
    reply = (await door.messages(conversation))[1]
    assert reply["content"] == text
    assert reply["status"] == "complete"
    assert reply["usage"]["completion_tokens"] > 0
    # vLLM was asked for usage on every chunk all the same.
    assert (await door.last_request())["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }


async def test_streamed_usage_as_asked(door: Door) -> None:
    final = await door.alice.chat.completions.create(
        model="sim-model",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in final]
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    reply = (await door.messages(final.response.headers["x-switchboard-conversation"]))[1]
    assert reply["usage"]["completion_tokens"] == usage.completion_tokens

    continuous = await door.alice.chat.completions.create(
        model="sim-model",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    every = [chunk async for chunk in continuous]
    assert all(chunk.usage is not None for chunk in every)


async def test_config_name_and_pinned_version(door: Door) -> None:
    await door.api.create_config(
        "helper", system_prompt="You are terse.", temperature=0.3, max_tokens=5
    )
    response = await door.api.admin.patch("/v1/configs/helper", json={"temperature": 0.9})
    assert response.status_code == 200, response.text

    latest = await door.alice.chat.completions.create(model="helper", messages=HELLO)
    assert latest.choices[0].message.content
    sent = await door.last_request()
    assert sent["model"] == "sim-model"
    assert sent["temperature"] == 0.9
    assert sent["max_tokens"] == 5
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}

    await door.alice.chat.completions.create(
        model="helper@1",
        messages=[{"role": "developer", "content": "Be kind."}, *HELLO],
        max_tokens=3,
    )
    sent = await door.last_request()
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 3
    # The request's own instructions: the configuration's system prompt is not added.
    assert [m["role"] for m in sent["messages"]] == ["developer", "user"]
    conversations = await door.conversations()
    pinned = next(c for c in conversations if c["config"] == "helper")
    stored = await door.messages(pinned["id"])
    assert {m["config"]["version"] for m in stored if m["role"] == "assistant"} <= {1, 2}


async def test_unknown_fields_reach_vllm_and_guided_fields_are_rewritten(door: Door) -> None:
    await door.alice.chat.completions.create(
        model="sim-model",
        messages=HELLO,
        extra_body={
            "top_k": 5,
            "repetition_penalty": 1.1,
            "chat_template_kwargs": {"enable_thinking": False},
            "guided_choice": ["yes", "no"],
            "some_future_field": {"x": 1},
        },
        seed=7,
        user="u-1",
    )
    sent = await door.last_request()
    assert sent["top_k"] == 5
    assert sent["repetition_penalty"] == 1.1
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["some_future_field"] == {"x": 1}
    assert sent["structured_outputs"] == {"choice": ["yes", "no"]}
    assert "guided_choice" not in sent
    assert sent["seed"] == 7
    assert sent["user"] == "u-1"


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def test_tools_both_ways_and_the_result_appended(door: Door) -> None:
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    first = await door.alice.with_options().chat.completions.with_raw_response.create(
        model="sim-model", messages=asked, tools=[WEATHER_TOOL], tool_choice="required"
    )
    completion = first.parse()
    calls = completion.choices[0].message.tool_calls
    assert calls
    assert calls[0].function.name == "get_weather"
    json.loads(calls[0].function.arguments)
    assert completion.choices[0].finish_reason == "tool_calls"
    conversation = first.headers["x-switchboard-conversation"]
    stored = await door.messages(conversation)
    assert stored[1]["tool_calls"][0]["id"] == calls[0].id

    # The tool's answer, sent with the whole history to the same conversation.
    history = [
        *asked,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call.model_dump() for call in calls],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'},
    ]
    second = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model",
        messages=history,
        tools=[WEATHER_TOOL],
        extra_headers={"X-Switchboard-Conversation": conversation},
    )
    assert second.headers["x-switchboard-conversation"] == conversation
    stored = await door.messages(conversation)
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[2]["tool_call_id"] == calls[0].id

    # Streamed: the call arrives as deltas the SDK assembles; the stored reply holds it whole.
    stream = await door.alice.chat.completions.create(
        model="sim-model", messages=asked, tools=[WEATHER_TOOL], tool_choice="required", stream=True
    )
    chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    name = "".join(d.function.name or "" for d in deltas if d.function)
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert name == "get_weather"
    reply = (await door.messages(stream.response.headers["x-switchboard-conversation"]))[1]
    assert reply["tool_calls"][0]["function"] == {"name": name, "arguments": arguments}


async def test_content_parts_are_stored_as_parts(door: Door) -> None:
    parts = [{"type": "text", "text": "Describe "}, {"type": "text", "text": "this."}]
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=[{"role": "user", "content": parts}]
    )
    stored = await door.messages(raw.headers["x-switchboard-conversation"])
    assert stored[0]["content"] == "Describe this."
    assert stored[0]["content_parts"] == parts
    assert (await door.last_request())["messages"][0]["content"] == parts


async def _turn(door: Door, history: list[dict[str, Any]], **options: Any) -> dict[str, str]:
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history, **options
    )
    history.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
    return dict(raw.headers)


async def test_a_chat_resent_in_full_is_one_conversation(door: Door) -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    places = set()
    for turn in range(5):
        history.append({"role": "user", "content": f"Question {turn}"})
        places.add((await _turn(door, history))["x-switchboard-conversation"])
    assert len(places) == 1
    (conversation,) = places
    stored = await door.messages(conversation)
    assert len(stored) == 11  # the system turn, then 5 exchanges
    assert [m["content"] for m in stored] == [m["content"] for m in history]
    assert len(await door.conversations()) == 1


async def test_a_regenerated_turn_is_a_branch(door: Door) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "One"}]
    first = (await _turn(door, history))["x-switchboard-conversation"]
    history.append({"role": "user", "content": "Two"})
    await _turn(door, history)
    # The client regenerates the last answer: the same history as the second request.
    regenerated = history[:-1]
    branch = (await _turn(door, regenerated))["x-switchboard-conversation"]
    assert branch != first
    assert len(await door.messages(first)) == 4
    assert [m["content"] for m in await door.messages(branch)] == [
        m["content"] for m in regenerated
    ]


async def test_two_resends_of_one_turn_at_once_append_one_and_branch_the_other(
    door: Door,
) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "One"}]
    first = (await _turn(door, history))["x-switchboard-conversation"]
    history.append({"role": "user", "content": "Two"})
    both = await asyncio.gather(_turn(door, list(history)), _turn(door, list(history)))
    places = sorted(headers["x-switchboard-conversation"] for headers in both)
    assert first in places
    assert len(set(places)) == 2
    assert len(await door.messages(first)) == 4
    other = next(place for place in places if place != first)
    assert len(await door.messages(other)) == 4
    assert len(await door.conversations()) == 2


async def test_the_conversation_header_both_ways(door: Door) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "One"}]
    first = (await _turn(door, history))["x-switchboard-conversation"]
    history.append({"role": "user", "content": "Two"})
    forced_history = list(history)
    forced = await _turn(door, forced_history, extra_headers={"X-Switchboard-Conversation": "new"})
    assert forced["x-switchboard-conversation"] != first
    # A forced new conversation is threaded into by its later resends.
    forced_history.append({"role": "user", "content": "Three"})
    later = await _turn(door, forced_history)
    assert later["x-switchboard-conversation"] == forced["x-switchboard-conversation"]
    appended = await _turn(door, list(history), extra_headers={"X-Switchboard-Conversation": first})
    assert appended["x-switchboard-conversation"] == first
    assert len(await door.messages(first)) == 4

    # A conversation started in the chat API (no chain hashes) is appended to by its turns.
    await door.api.create_config("plain", is_default=True)
    started = await door.api.conversation()
    sent = await door.api.alice.post(
        f"/v1/conversations/{started['id']}/messages", json={"content": "Hi"}
    )
    assert sent.status_code == 201, sent.text
    chat_history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": sent.json()["content"]},
        {"role": "user", "content": "And then?"},
    ]
    headers = await _turn(
        door, chat_history, extra_headers={"X-Switchboard-Conversation": started["id"]}
    )
    assert headers["x-switchboard-conversation"] == started["id"]
    assert len(await door.messages(started["id"])) == 4


async def test_logprobs_are_gathered_from_vllms_chunks(door: Door) -> None:
    completion = await door.alice.chat.completions.create(
        model="sim-model", messages=HELLO, logprobs=True, top_logprobs=2
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None
    content = choice.logprobs.content
    assert content
    assert "".join(item.token for item in content) == choice.message.content
    assert all(len(item.top_logprobs) == 2 for item in content)
    sent = await door.last_request()
    assert sent["logprobs"] is True
    assert sent["top_logprobs"] == 2
    # Not asked: none.
    plain = await door.alice.chat.completions.create(model="sim-model", messages=HELLO)
    assert plain.choices[0].logprobs is None


async def test_response_format_reaches_vllm(door: Door) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    completion = await door.alice.chat.completions.create(
        model="sim-model",
        messages=HELLO,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        },
        max_tokens=200,
    )
    text = completion.choices[0].message.content
    assert text is not None
    assert isinstance(json.loads(text)["answer"], str)
    assert (await door.last_request())["response_format"]["json_schema"]["schema"] == schema
