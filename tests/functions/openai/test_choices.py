"""``n`` > 1 through the door with the official SDK: every choice stored as a reply of its
own (the first in the request's conversation, each further one in a branch forked from
the user turn), usage counted once, resends threaded onto the choice they carry on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from functions.core.db.sql import fetch
from tests.functions.openai.conftest import Door
from tests.functions.openai.test_chat_completions import WEATHER_TOOL
from tests.support.timing import scaled

ASKED = [{"role": "user", "content": "Tell me about the sea"}]


async def _conversation(door: Door, conversation_id: str) -> dict[str, Any]:
    response = await door.api.alice.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _ledger(replies: list[str]) -> list[dict[str, Any]]:
    """The usage ledger's rows of these replies."""
    rows = await fetch("SELECT * FROM usage_ledger")
    return [row for row in rows if str(row["id"]) in replies]


async def _check_stored(
    door: Door,
    places: list[str],
    texts: list[str | None],
    usage: Any,
    *,
    history: list[dict[str, Any]] = ASKED,
) -> list[list[dict[str, Any]]]:
    """Each choice is the reply of its conversation, the further ones in branches forked
    from the first's user turn; the ledger counts the request's usage once."""
    assert len(set(places)) == len(places)
    stored = [await door.messages(place) for place in places]
    first = stored[0]
    asked = first[-2]
    assert asked["role"] == "user"
    for index, (messages, text) in enumerate(zip(stored, texts, strict=True)):
        reply = messages[-1]
        assert reply["role"] == "assistant"
        assert reply["status"] == "complete"
        if text is not None:
            assert reply["content"] == text
        if index:
            # A branch: the whole history, then its choice.
            assert [m["content"] for m in messages[:-1]] == [m["content"] for m in history]
            branch = await _conversation(door, places[index])
            assert branch["forked_from_conversation_id"] == places[0]
            assert branch["forked_from_message_id"] == asked["id"]
            assert reply["usage"]["prompt_tokens"] == 0
    rows = await _ledger([messages[-1]["id"] for messages in stored])
    assert len(rows) == len(places)
    assert sum(row["prompt_tokens"] for row in rows) == usage.prompt_tokens
    assert sum(row["completion_tokens"] for row in rows) == usage.completion_tokens
    return stored


async def test_n_non_streamed_stores_every_choice(door: Door) -> None:
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=ASKED, n=3
    )
    completion = raw.parse()
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    texts = [choice.message.content for choice in completion.choices]
    assert all(texts)
    assert len(set(texts)) == 3  # vLLM samples each choice on its own
    assert (await door.last_request())["n"] == 3
    places = raw.headers["x-switchboard-choice-conversations"].split(",")
    assert places[0] == raw.headers["x-switchboard-conversation"]
    body = json.loads(raw.content)
    assert [c["conversation_id"] for c in body["switchboard"]["choices"]] == places
    assert raw.headers["x-switchboard-choice-reply-ids"].split(",") == [
        c["reply_id"] for c in body["switchboard"]["choices"]
    ]
    assert completion.usage is not None
    stored = await _check_stored(door, places, texts, completion.usage)
    assert stored[0][-1]["id"] == raw.headers["x-switchboard-reply-id"]
    assert len(await door.conversations()) == 3


async def test_n_streamed_interleaves_and_stores_every_choice(door: Door) -> None:
    stream = await door.alice.chat.completions.create(
        model="sim-model",
        messages=ASKED,
        n=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = ["", "", ""]
    order = []
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            order.append(choice.index)
            texts[choice.index] += choice.delta.content or ""
    assert order != sorted(order)  # vLLM's chunks, interleaved as it sent them
    assert usage is not None
    places = stream.response.headers["x-switchboard-choice-conversations"].split(",")
    await _check_stored(door, places, list(texts), usage)


async def test_tool_calls_with_n_both_ways(door: Door) -> None:
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=asked, tools=[WEATHER_TOOL], tool_choice="required", n=2
    )
    completion = raw.parse()
    places = raw.headers["x-switchboard-choice-conversations"].split(",")
    assert completion.usage is not None
    stored = await _check_stored(door, places, [None, None], completion.usage, history=asked)
    for choice, messages in zip(completion.choices, stored, strict=True):
        calls = choice.message.tool_calls
        assert calls
        assert messages[-1]["tool_calls"][0]["id"] == calls[0].id
        assert messages[-1]["tool_calls"][0]["function"]["arguments"] == calls[0].function.arguments
    assert completion.choices[0].message.tool_calls != completion.choices[1].message.tool_calls

    stream = await door.alice.chat.completions.create(
        model="sim-model",
        messages=asked,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    arguments = ["", ""]
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                arguments[choice.index] += (delta.function and delta.function.arguments) or ""
    places = stream.response.headers["x-switchboard-choice-conversations"].split(",")
    stored = await _check_stored(door, places, [None, None], usage, history=asked)
    for text, messages in zip(arguments, stored, strict=True):
        assert text
        assert messages[-1]["tool_calls"][0]["function"]["arguments"] == text


async def test_a_resend_threads_onto_the_choice_it_carries_on(door: Door) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "Pick a colour"}]
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history, n=3
    )
    texts = [choice.message.content for choice in raw.parse().choices]
    places = raw.headers["x-switchboard-choice-conversations"].split(",")

    for index in (0, 2):
        resent = [
            *history,
            {"role": "assistant", "content": texts[index]},
            {"role": "user", "content": f"Why {index}?"},
        ]
        again = await door.alice.chat.completions.with_raw_response.create(
            model="sim-model", messages=resent
        )
        assert again.headers["x-switchboard-conversation"] == places[index]
        stored = await door.messages(places[index])
        assert [m["content"] for m in stored[:-1]] == [m["content"] for m in resent]
    assert len(await door.conversations()) == 3


async def test_n_with_the_conversation_header_appends_the_first_choice(door: Door) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "One"}]
    first = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history
    )
    conversation = first.headers["x-switchboard-conversation"]
    history += [
        {"role": "assistant", "content": first.parse().choices[0].message.content},
        {"role": "user", "content": "Two"},
    ]
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model",
        messages=history,
        n=2,
        extra_headers={"X-Switchboard-Conversation": conversation},
    )
    completion = raw.parse()
    places = raw.headers["x-switchboard-choice-conversations"].split(",")
    assert places[0] == conversation
    assert completion.usage is not None
    stored = await _check_stored(
        door,
        places,
        [choice.message.content for choice in completion.choices],
        completion.usage,
        history=history,
    )
    assert len(stored[0]) == 4


async def test_n_with_an_idempotency_key_replays_every_choice(door: Door) -> None:
    options: dict[str, Any] = {"extra_headers": {"Idempotency-Key": "n-replay-1"}}
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=ASKED, n=2, **options
    )
    again = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=ASKED, n=2, **options
    )
    first, second = raw.parse(), again.parse()
    assert [c.message.content for c in second.choices] == [c.message.content for c in first.choices]
    assert second.usage == first.usage
    for name in ("x-switchboard-choice-conversations", "x-switchboard-choice-reply-ids"):
        assert again.headers[name] == raw.headers[name]
    assert len(await door.conversations()) == 2

    with pytest.raises(openai.ConflictError):  # the same key with another body
        await door.alice.chat.completions.create(
            model="sim-model", messages=ASKED, n=2, stream=True, **options
        )
    replayed = await door.alice.chat.completions.create(
        model="sim-model",
        messages=ASKED,
        n=2,
        stream=True,
        extra_headers={"Idempotency-Key": "n-replay-2"},
    )
    texts = ["", ""]
    async for chunk in replayed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    twice = await door.alice.chat.completions.create(
        model="sim-model",
        messages=ASKED,
        n=2,
        stream=True,
        extra_headers={"Idempotency-Key": "n-replay-2"},
    )
    again_texts = ["", ""]
    async for chunk in twice:
        for choice in chunk.choices:
            again_texts[choice.index] += choice.delta.content or ""
    assert again_texts == texts
    assert len(await door.conversations()) == 4


@pytest.mark.parametrize("n", [0, 17])
async def test_n_out_of_bounds_is_a_400_naming_n(door: Door, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await door.alice.chat.completions.create(model="sim-model", messages=ASKED, n=n)
    assert raised.value.param == "n"
    assert await door.conversations() == []


async def test_a_client_that_leaves_cancels_every_choice(door: Door) -> None:
    slow = door.simulators["slow-model"]
    await slow.fresh()
    received = 0
    async with door.api.alice.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "slow-model", "messages": ASKED, "stream": True, "n": 2},
    ) as response:
        places = response.headers["x-switchboard-choice-conversations"].split(",")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                received += 1
                if received == 8:
                    break  # leaving the block closes the connection mid-stream
    await slow.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    deadline = asyncio.get_running_loop().time() + scaled(5)
    while True:
        replies = [(await door.messages(place))[-1] for place in places]
        done = all(reply["status"] != "pending" for reply in replies)
        if done or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [reply["status"] for reply in replies] == ["cancelled", "cancelled"]
    assert all(reply["content"] for reply in replies)
    # Partial usage, the prompt once: each choice its own tokens up to the cut.
    assert replies[0]["usage"]["prompt_tokens"] > 0
    assert replies[1]["usage"]["prompt_tokens"] == 0
    counted = sum(reply["usage"]["completion_tokens"] for reply in replies)
    assert received - 2 <= counted < 120
    rows = await _ledger([reply["id"] for reply in replies])
    assert sorted(row["status"] for row in rows) == ["cancelled", "cancelled"]
