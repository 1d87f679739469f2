"""Contract §2: non-streaming chat completions, determinism and token accounting."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.simulator.conftest import MODEL, OTHER_MODEL, TOKENS, chat_body, parse_sse

KOREAN = "안녕하세요, 서울의 바다를 좋아해요 🌊🚀 ok?"


async def chat(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body, **kwargs)


async def streamed_text(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, Any]:
    response = await chat(
        client, {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200
    events = parse_sse(response.content)
    text = "".join(
        choice["delta"].get("content", "") for event in events[:-1] for choice in event["choices"]
    )
    return text, events[-2]["usage"]


async def test_non_streaming_shape_has_every_field(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "service_tier",
        "system_fingerprint",
        "usage",
        "prompt_logprobs",
        "prompt_token_ids",
        "prompt_text",
        "kv_transfer_params",
    ]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    for key in (
        "service_tier",
        "system_fingerprint",
        "prompt_logprobs",
        "prompt_token_ids",
        "prompt_text",
        "kv_transfer_params",
    ):
        assert body[key] is None, key
    (choice,) = body["choices"]
    assert list(choice) == [
        "index",
        "message",
        "logprobs",
        "finish_reason",
        "stop_reason",
        "token_ids",
    ]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] is None
    assert choice["token_ids"] is None
    message = choice["message"]
    assert list(message) == [
        "role",
        "content",
        "refusal",
        "annotations",
        "audio",
        "function_call",
        "tool_calls",
        "reasoning",
    ]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str)
    assert message["content"]
    assert message["tool_calls"] == []
    for key in ("refusal", "annotations", "audio", "function_call", "reasoning"):
        assert message[key] is None, key
    usage = body["usage"]
    assert list(usage) == [
        "prompt_tokens",
        "total_tokens",
        "completion_tokens",
        "prompt_tokens_details",
    ]
    assert usage["completion_tokens"] == TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] is None


async def test_id_comes_from_x_request_id(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body(), headers={"X-Request-Id": "req-42"})
    assert response.json()["id"] == "chatcmpl-req-42"
    streamed = await chat(client, chat_body(stream=True), headers={"X-Request-Id": "req-43"})
    assert {event["id"] for event in parse_sse(streamed.content)[:-1]} == {"chatcmpl-req-43"}


async def test_id_falls_back_to_body_request_id(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body(request_id="from-body"))
    assert response.json()["id"] == "chatcmpl-from-body"


async def test_ids_are_random_without_header(client: httpx.AsyncClient) -> None:
    first = (await chat(client, chat_body())).json()["id"]
    second = (await chat(client, chat_body())).json()["id"]
    assert first != second


@pytest.mark.parametrize("model", [None, ""])
async def test_missing_or_empty_model_means_first_served(
    client: httpx.AsyncClient, model: str | None
) -> None:
    body = chat_body()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    response = await chat(client, body)
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


async def test_second_served_model_is_addressable(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body(model=OTHER_MODEL))
    assert response.json()["model"] == OTHER_MODEL


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    body = chat_body(frobnicate=True, top_k=5, min_p=0.1, user="u1", priority=3)
    body["messages"][0]["name"] = "alice"
    response = await chat(client, body)
    assert response.status_code == 200


async def test_an_empty_tools_array_is_refused(client: httpx.AsyncClient) -> None:
    # vLLM >= 0.20 (PR 39780) refuses it as OpenAI does; older releases ignored it.
    response = await chat(client, chat_body(tools=[]))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("`tools` must not be an empty array.")
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "tools", 400)


async def test_same_request_gives_same_text(client: httpx.AsyncClient) -> None:
    body = chat_body(seed=7, temperature=0.5)
    first = (await chat(client, body)).json()["choices"][0]["message"]["content"]
    second = (await chat(client, body)).json()["choices"][0]["message"]["content"]
    assert first == second


async def test_text_depends_on_messages_seed_model_and_sampling(
    client: httpx.AsyncClient,
) -> None:
    async def text(**changes: Any) -> str:
        body = {**chat_body(seed=7, temperature=0.5), **changes}
        return str((await chat(client, body)).json()["choices"][0]["message"]["content"])

    base = await text()
    variants = [
        await text(seed=8),
        await text(temperature=0.6),
        await text(model=OTHER_MODEL),
        await text(messages=[{"role": "user", "content": "something else entirely"}]),
    ]
    assert all(variant != base for variant in variants)


async def test_stream_concatenates_to_the_non_streaming_text(client: httpx.AsyncClient) -> None:
    body = chat_body(KOREAN, seed=3)
    full = (await chat(client, body)).json()
    text, usage = await streamed_text(client, body)
    assert text == full["choices"][0]["message"]["content"]
    assert usage == {
        key: full["usage"][key] for key in ("prompt_tokens", "total_tokens", "completion_tokens")
    }


async def test_reply_echoes_the_user_and_round_trips_korean_and_emoji(
    client: httpx.AsyncClient,
) -> None:
    replies = []
    for seed in range(6):
        body = chat_body(KOREAN, seed=seed)
        response = await chat(client, body)
        # Raw bytes are valid UTF-8 (no split code point) and decode to what JSON says.
        response.content.decode("utf-8")
        replies.append(response.json()["choices"][0]["message"]["content"])
        text, _ = await streamed_text(client, body)
        assert text == replies[-1]
    joined = " ".join(replies)
    assert re.search(r"[\uac00-\ud7af]", joined), joined  # Hangul
    assert any(word in joined for word in KOREAN.split()), joined  # echoes the user
    assert re.search(r"[\U0001F300-\U0001FAFF]", joined), joined  # emoji


async def test_token_counts_add_up_and_match_tokenize(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": KOREAN}]},
        {"role": "assistant", "content": "네, 알겠어요 👍"},
        {"role": "user", "content": "And again, in English please."},
    ]
    response = (await chat(client, {"model": MODEL, "messages": messages})).json()
    usage = response["usage"]
    tokenized = (await client.post("/tokenize", json={"model": MODEL, "messages": messages})).json()
    assert usage["prompt_tokens"] == tokenized["count"] == len(tokenized["tokens"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    reply = response["choices"][0]["message"]["content"]
    counted = (
        await client.post("/tokenize", json={"prompt": reply, "add_special_tokens": False})
    ).json()
    assert counted["count"] == usage["completion_tokens"] == TOKENS


async def test_max_tokens_truncates_with_finish_length(client: httpx.AsyncClient) -> None:
    full = (await chat(client, chat_body(seed=1))).json()["choices"][0]["message"]["content"]
    response = (await chat(client, chat_body(seed=1, max_tokens=4))).json()
    choice = response["choices"][0]
    assert choice["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 4
    assert full.startswith(choice["message"]["content"])


async def test_max_completion_tokens_wins_over_max_tokens(client: httpx.AsyncClient) -> None:
    response = (await chat(client, chat_body(max_tokens=2, max_completion_tokens=5))).json()
    assert response["usage"]["completion_tokens"] == 5
    assert response["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_above_reply_length_finishes_stop(client: httpx.AsyncClient) -> None:
    response = (await chat(client, chat_body(max_tokens=100))).json()
    assert response["usage"]["completion_tokens"] == TOKENS
    assert response["choices"][0]["finish_reason"] == "stop"


async def test_stop_string_cuts_before_it(client: httpx.AsyncClient) -> None:
    full = (await chat(client, chat_body(seed=5))).json()["choices"][0]["message"]["content"]
    stop = full.split()[2]
    response = (await chat(client, chat_body(seed=5, stop=[stop, "never-there"]))).json()
    choice = response["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == stop
    assert choice["message"]["content"] == full[: full.index(stop)]
    counted = (
        await client.post(
            "/tokenize", json={"prompt": choice["message"]["content"], "add_special_tokens": False}
        )
    ).json()["count"]
    assert response["usage"]["completion_tokens"] == counted
    text, _ = await streamed_text(client, chat_body(seed=5, stop=stop))
    assert text == choice["message"]["content"]


async def test_n_choices_differ_and_usage_sums_them(client: httpx.AsyncClient) -> None:
    response = (await chat(client, chat_body(n=3, max_tokens=5))).json()
    choices = response["choices"]
    assert [choice["index"] for choice in choices] == [0, 1, 2]
    assert len({choice["message"]["content"] for choice in choices}) == 3
    assert response["usage"]["completion_tokens"] == 15


async def test_header_token_override(client: httpx.AsyncClient) -> None:
    response = await chat(client, chat_body(), headers={"X-Sim-Tokens": "3"})
    assert response.json()["usage"]["completion_tokens"] == 3
    assert response.json()["choices"][0]["finish_reason"] == "stop"


async def test_chunked_request_body_is_read_whole(client: httpx.AsyncClient) -> None:
    payload = json.dumps(chat_body(KOREAN, seed=2)).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(payload), 7):
            yield payload[at : at + 7]

    response = await client.post(
        "/v1/chat/completions", content=pieces(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    same = await chat(client, chat_body(KOREAN, seed=2))
    assert response.json()["choices"] == same.json()["choices"]
