"""``completions.create`` through the door with the official SDK: the prompt's forms,
streamed and not, ``echo`` and ``logprobs``, the errors, and what each exchange stored."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.functions.openai.conftest import Door
from tests.support.timing import scaled

PROMPT = "Once upon a time"


async def token_ids(door: Door, text: str) -> list[int]:
    """The ids the simulator's ``/tokenize`` gives ``text`` (as a completion counts it)."""
    async with httpx.AsyncClient(base_url=door.simulators["sim-model"].root_url) as client:
        response = await client.post("/tokenize", json={"model": "sim-model", "prompt": text})
    assert response.status_code == 200, response.text
    tokens: list[int] = response.json()["tokens"]
    return tokens


async def stored_pair(door: Door, conversation: str) -> tuple[dict[str, Any], dict[str, Any]]:
    stored = await door.messages(conversation)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    return stored[0], stored[1]


async def test_non_streamed_is_stored_as_one_turn_and_one_reply(door: Door) -> None:
    raw = await door.alice.completions.with_raw_response.create(
        model="sim-model", prompt=PROMPT, max_tokens=8, extra_body={"top_k": 5}
    )
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == "sim-model"
    (choice,) = completion.choices
    assert choice.text
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion._request_id == raw.headers["x-request-id"]

    asked, reply = await stored_pair(door, raw.headers["x-switchboard-conversation"])
    assert asked["content"] == PROMPT
    assert asked["id"] == raw.headers["x-switchboard-user-message-id"]
    assert reply["id"] == raw.headers["x-switchboard-reply-id"]
    assert reply["status"] == "complete"
    assert reply["content"] == choice.text
    assert reply["finish_reason"] == choice.finish_reason
    assert reply["usage"] == completion.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    )
    conversation = next(
        c
        for c in await door.conversations()
        if c["id"] == raw.headers["x-switchboard-conversation"]
    )
    assert conversation["title"] == PROMPT

    # vLLM's completions route got the prompt as sent, the extras, and a request for usage.
    sent = await door.last_request()
    assert sent["prompt"] == PROMPT
    assert "messages" not in sent
    assert sent["top_k"] == 5
    assert sent["max_tokens"] == 8
    assert sent["stream_options"]["include_usage"] is True


async def test_streamed_without_stream_options_has_no_usage_but_stores_it(door: Door) -> None:
    stream = await door.alice.completions.create(model="sim-model", prompt=PROMPT, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(chunk.choices[0].text for chunk in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    _, reply = await stored_pair(door, stream.response.headers["x-switchboard-conversation"])
    assert reply["status"] == "complete"
    assert reply["content"] == text
    assert reply["usage"]["completion_tokens"] > 0
    assert (await door.last_request())["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }


async def test_streamed_usage_as_asked(door: Door) -> None:
    stream = await door.alice.completions.create(
        model="sim-model",
        prompt=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    _, reply = await stored_pair(door, stream.response.headers["x-switchboard-conversation"])
    assert reply["usage"]["completion_tokens"] == usage.completion_tokens
    assert reply["usage"]["prompt_tokens"] == usage.prompt_tokens


async def test_a_prompt_of_one_string_in_a_list_is_the_string(door: Door) -> None:
    as_list = await door.alice.completions.with_raw_response.create(
        model="sim-model", prompt=[PROMPT], seed=7
    )
    as_text = await door.alice.completions.create(model="sim-model", prompt=PROMPT, seed=7)
    assert as_list.parse().choices[0].text == as_text.choices[0].text
    asked, _ = await stored_pair(door, as_list.headers["x-switchboard-conversation"])
    assert asked["content"] == PROMPT
    assert (await door.last_request())["prompt"] == PROMPT


async def test_token_ids_reach_vllm_as_sent_and_are_stored_as_a_part(door: Door) -> None:
    ids = await token_ids(door, PROMPT)
    for prompt in (ids, [ids]):
        raw = await door.alice.completions.with_raw_response.create(
            model="sim-model", prompt=prompt, seed=3
        )
        completion = raw.parse()
        assert completion.choices[0].text
        assert (await door.last_request())["prompt"] == prompt
        asked, reply = await stored_pair(door, raw.headers["x-switchboard-conversation"])
        assert asked["content"] == ""
        assert asked["content_parts"] == [{"type": "token_ids", "token_ids": ids}]
        assert reply["content"] == completion.choices[0].text
    # The ids spell the text: the same answer as the text prompt.
    as_text = await door.alice.completions.create(model="sim-model", prompt=PROMPT, seed=3)
    assert as_text.choices[0].text == completion.choices[0].text


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        (["one", "two"], "2 prompts"),
        ([[1, 2], [3, 4]], "2 prompts"),
        ("", "non-empty"),
        ([], "non-empty"),
        ([1, "two"], "a list of token ids"),
        ({"text": "hi"}, "a list of token ids"),
    ],
)
async def test_several_or_malformed_prompts_are_a_400_naming_prompt(
    door: Door, prompt: Any, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await door.alice.completions.create(model="sim-model", prompt=prompt)
    assert caught.value.param == "prompt"
    assert words in caught.value.message
    assert await door.conversations() == []


async def vllms_own(door: Door, **body: Any) -> dict[str, Any]:
    """What the simulator itself answers ``body`` non-streamed."""
    async with httpx.AsyncClient(base_url=door.simulators["sim-model"].base_url) as client:
        response = await client.post("/completions", json={"model": "sim-model", **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("echo", [True, False])
async def test_echo_and_logprobs_non_streamed_and_streamed(door: Door, echo: bool) -> None:
    asked: dict[str, Any] = {
        "prompt": PROMPT,
        "echo": echo,
        "logprobs": 2,
        "max_tokens": 5,
        "seed": 1,
    }
    completion = await door.alice.completions.create(model="sim-model", **asked)
    (choice,) = completion.choices
    assert choice.text.startswith(PROMPT) is echo
    logprobs = choice.logprobs
    assert logprobs is not None
    assert logprobs.tokens
    # The answer vLLM would give, gathered from its stream: the text and every logprob.
    own = (await vllms_own(door, **asked))["choices"][0]
    assert choice.text == own["text"]
    assert logprobs.model_dump() == own["logprobs"]

    stream = await door.alice.completions.create(model="sim-model", stream=True, **asked)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    streamed_tokens = [t for c in chunks for t in (c.choices[0].logprobs.tokens or [])]  # type: ignore[union-attr]
    assert streamed_tokens == logprobs.tokens
    # Stored as vLLM answered: the echoed prompt, then the completion.
    _, reply = await stored_pair(door, stream.response.headers["x-switchboard-conversation"])
    assert reply["content"] == choice.text


async def test_a_configuration_names_the_model_and_its_sampling(door: Door) -> None:
    await door.api.create_config("writer", temperature=0.3, max_tokens=6)
    raw = await door.alice.completions.with_raw_response.create(model="writer", prompt=PROMPT)
    assert raw.parse().model == "sim-model"
    sent = await door.last_request()
    assert sent["model"] == "sim-model"
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 6
    _, reply = await stored_pair(door, raw.headers["x-switchboard-conversation"])
    assert reply["config"]["name"] == "writer"


async def test_errors_in_openais_shape(door: Door) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await door.alice.completions.create(model="no-such-model", prompt=PROMPT)
    assert missing.value.code == "model_not_served"
    with pytest.raises(openai.BadRequestError) as several:
        await door.alice.completions.create(model="sim-model", prompt=PROMPT, n=2)
    assert several.value.param == "n"
    with pytest.raises(openai.BadRequestError) as options:
        await door.alice.completions.create(
            model="sim-model", prompt=PROMPT, stream_options={"include_usage": True}
        )
    assert options.value.param == "stream_options"
    # vLLM's own refusal comes back as it said it.
    with pytest.raises(openai.BadRequestError) as suffix:
        await door.alice.completions.create(model="sim-model", prompt=PROMPT, suffix="end")
    assert "suffix is not currently supported" in suffix.value.message
    assert await door.conversations() != []


async def test_context_length_is_vllms_400_streamed_or_not(door: Door) -> None:
    too_long = "word " * 3000  # sim-model: 1024 tokens
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await door.alice.completions.create(model="sim-model", prompt=too_long, stream=stream)
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["code"] == "context_length_exceeded"
        assert "maximum context length is 1024 tokens" in caught.value.message
    conversations = await door.conversations()
    assert len(conversations) == 2
    for conversation in conversations:
        _, reply = await stored_pair(door, conversation["id"])
        assert reply["status"] == "failed"
        assert reply["error"]["code"] == "context_length_exceeded"


async def test_another_key_cannot_read_the_stored_completion(door: Door) -> None:
    raw = await door.alice.completions.with_raw_response.create(model="sim-model", prompt=PROMPT)
    conversation = raw.headers["x-switchboard-conversation"]
    response = await door.api.bob.get(f"/v1/conversations/{conversation}/messages")
    assert response.status_code == 404
    assert await door.conversations(door.api.bob) == []


async def test_sse_framing_and_a_client_that_leaves(door: Door) -> None:
    async with door.api.alice.stream(
        "POST", "/v1/completions", json={"model": "sim-model", "prompt": PROMPT, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw.startswith(b"data: {")
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    assert b'"usage"' not in raw

    slow = door.simulators["slow-model"]
    await slow.fresh()
    received = 0
    async with door.api.alice.stream(
        "POST", "/v1/completions", json={"model": "slow-model", "prompt": PROMPT, "stream": True}
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
    while (reply := (await stored_pair(door, conversation))[1])["status"] == "pending":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert reply["status"] == "cancelled"
    assert reply["content"]
    # Its usage up to the cut (every completion chunk carries a token; slow-model writes 60).
    assert received <= reply["usage"]["completion_tokens"] < 60


async def test_idempotency_key_replays_the_first_completion(door: Door) -> None:
    key = {"Idempotency-Key": "completion-retry-1"}
    first = await door.alice.completions.with_raw_response.create(
        model="sim-model", prompt=PROMPT, extra_headers=key
    )
    again = await door.alice.completions.with_raw_response.create(
        model="sim-model", prompt=PROMPT, extra_headers=key
    )
    assert again.headers["x-switchboard-reply-id"] == first.headers["x-switchboard-reply-id"]
    assert again.parse().choices[0].text == first.parse().choices[0].text
    assert again.parse().usage == first.parse().usage
    with pytest.raises(openai.ConflictError) as caught:
        await door.alice.completions.create(
            model="sim-model", prompt="another prompt", extra_headers=key
        )
    assert caught.value.code == "idempotency_key_reused"

    # A streamed completion replayed: the stored reply, as completion chunks.
    streamed_key = {"Idempotency-Key": "completion-retry-2"}
    texts, usages = [], []
    for _ in range(2):
        stream = await door.alice.completions.create(
            model="sim-model",
            prompt=PROMPT,
            extra_headers=streamed_key,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert all(chunk.object == "text_completion" for chunk in chunks)
        texts.append("".join(c.choices[0].text for c in chunks if c.choices))
        usages.append(chunks[-1].usage)
    assert texts[0] == texts[1]
    assert usages[0] == usages[1]
    assert usages[0] is not None
    assert len(await door.conversations()) == 2
