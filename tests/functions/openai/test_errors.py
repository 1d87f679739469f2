"""Every error the door answers, as the official SDK raises it: OpenAI's shape, the status
each exception class maps to, and ``x-request-id`` on every response."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.functions.openai.conftest import Door

HELLO = [{"role": "user", "content": "Hello"}]


def assert_openai_shape(body: object) -> dict[str, object]:
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    return body


async def test_bad_requests_are_400_never_422(door: Door) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await door.alice.chat.completions.create(model="sim-model", messages=HELLO, n=17)
    error = assert_openai_shape(caught.value.body)
    assert error["param"] == "n"
    assert error["type"] == "invalid_request_error"
    assert caught.value.request_id == caught.value.response.headers["x-request-id"]

    with pytest.raises(openai.BadRequestError) as caught:
        await door.alice.chat.completions.create(model="sim-model", messages=HELLO, temperature=5)
    assert assert_openai_shape(caught.value.body)["param"] == "temperature"

    with pytest.raises(openai.BadRequestError) as caught:
        await door.alice.chat.completions.create(model="sim-model", messages=[])
    assert assert_openai_shape(caught.value.body)["param"] == "messages"

    with pytest.raises(openai.BadRequestError) as caught:  # as vLLM refuses it
        await door.alice.chat.completions.create(
            model="sim-model", messages=HELLO, stream_options={"include_usage": True}
        )
    assert assert_openai_shape(caught.value.body)["param"] == "stream_options"

    with pytest.raises(openai.BadRequestError) as caught:  # stored alike on both engines
        await door.alice.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "a\u0000b"}]
        )
    assert assert_openai_shape(caught.value.body)["param"] == "messages[0].content"

    response = await door.api.alice.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert_openai_shape(response.json()["error"])
    assert response.headers["x-request-id"]


async def test_context_length_is_vllms_400_streamed_or_not(door: Door) -> None:
    too_long = [{"role": "user", "content": "word " * 3000}]  # sim-model: 1024 tokens
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await door.alice.chat.completions.create(
                model="sim-model", messages=too_long, stream=stream
            )
        error = assert_openai_shape(caught.value.body)
        assert error["code"] == "context_length_exceeded"
        assert "1024" in str(error["message"])
    # Stored all the same, each a failed reply.
    conversations = await door.conversations()
    assert len(conversations) == 2
    for conversation in conversations:
        reply = (await door.messages(conversation["id"]))[-1]
        assert reply["status"] == "failed"
        assert reply["error"]["code"] == "context_length_exceeded"


async def test_a_bad_key_is_401(door: Door) -> None:
    client = door.sdk("sb-not-a-real-key")
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="sim-model", messages=HELLO)
        assert assert_openai_shape(caught.value.body)["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    finally:
        await client.close()


async def test_unknown_model_is_404_and_stores_nothing(door: Door) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await door.alice.chat.completions.create(model="no-such-model", messages=HELLO)
    assert_openai_shape(caught.value.body)
    with pytest.raises(openai.NotFoundError):
        await door.alice.chat.completions.create(model="nobody@3", messages=HELLO)
    assert await door.conversations() == []


async def test_a_history_that_does_not_extend_the_conversation_is_409(door: Door) -> None:
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO
    )
    conversation = raw.headers["x-switchboard-conversation"]
    header = {"X-Switchboard-Conversation": conversation}
    with pytest.raises(openai.ConflictError) as caught:
        await door.alice.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "Something else"}],
            extra_headers=header,
        )
    error = assert_openai_shape(caught.value.body)
    assert error["param"] == "messages[0]"
    assert error["code"] == "history_mismatch"
    # Nothing new: the same history sent again.
    reply = raw.parse().choices[0].message.content
    with pytest.raises(openai.ConflictError):
        await door.alice.chat.completions.create(
            model="sim-model",
            messages=[*HELLO, {"role": "assistant", "content": reply}],
            extra_headers=header,
        )
    # Another key's conversation is not found, never appended to.
    with pytest.raises(openai.NotFoundError):
        await door.bob.chat.completions.create(
            model="sim-model",
            messages=[*HELLO, {"role": "assistant", "content": reply}, *HELLO],
            extra_headers=header,
        )
    assert len(await door.messages(conversation)) == 2


async def test_a_body_over_the_limit_is_413(door: Door) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await door.alice.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x" * (2 * 1024 * 1024)}]
        )
    assert caught.value.status_code == 413
    assert_openai_shape(caught.value.body)


async def test_upstream_failures_are_5xx(door: Door) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await door.alice.chat.completions.create(model="fail-model", messages=HELLO)
    assert caught.value.status_code == 502
    assert assert_openai_shape(caught.value.body)["type"] == "server_error"
    with pytest.raises(openai.InternalServerError) as caught:
        await door.alice.chat.completions.create(model="hang-model", messages=HELLO, stream=True)
    assert caught.value.status_code == 504


async def test_an_error_mid_stream_is_an_error_chunk_the_sdk_raises(door: Door) -> None:
    stream = await door.alice.chat.completions.create(
        model="cut-model", messages=HELLO, stream=True
    )
    received: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

    with pytest.raises(openai.APIError) as caught:
        await read()
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.body is not None
    conversation = stream.response.headers["x-switchboard-conversation"]
    reply = (await door.messages(conversation))[1]
    assert reply["status"] == "failed"
    assert reply["content"] == "".join(received)


async def test_idempotency_key_replays_the_first_reply(door: Door) -> None:
    key = {"Idempotency-Key": "door-retry-1"}
    first = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO, extra_headers=key
    )
    again = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO, extra_headers=key
    )
    assert again.headers["x-switchboard-reply-id"] == first.headers["x-switchboard-reply-id"]
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    # The same key with another body (stream: true) is another request.
    with pytest.raises(openai.ConflictError) as caught:
        await door.alice.chat.completions.create(
            model="sim-model", messages=HELLO, extra_headers=key, stream=True
        )
    assert assert_openai_shape(caught.value.body)["code"] == "idempotency_key_reused"

    # A streamed send replayed: the stored reply, as chunks.
    streamed_key = {"Idempotency-Key": "door-retry-2"}
    texts = []
    for _ in range(2):
        stream = await door.alice.chat.completions.create(
            model="sim-model",
            messages=HELLO,
            extra_headers=streamed_key,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        assert chunks[-1].usage is not None
    assert texts[0] == texts[1]
    assert len(await door.conversations()) == 2


async def test_every_response_has_a_request_id(door: Door) -> None:
    for response in (
        await door.api.anonymous.get("/v1/models"),
        await door.api.alice.get("/v1/models"),
        await door.api.alice.post("/v1/chat/completions", json={"model": "sim-model"}),
        await door.api.alice.get("/v1/nothing-here"),
    ):
        assert response.headers["x-request-id"], response
        if response.status_code >= 400:
            assert_openai_shape(response.json()["error"])
    assert isinstance(door.api.alice, httpx.AsyncClient)


async def test_stream_options_without_stream_as_vllm_reads_them(door: Door) -> None:
    # An empty {} passes vLLM's check (it reads the raw value); it asks for nothing here.
    response = await door.api.alice.post(
        "/v1/chat/completions",
        json={"model": "sim-model", "messages": HELLO, "stream_options": {}},
    )
    assert response.status_code == 200, response.text
