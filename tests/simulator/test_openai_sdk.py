"""The official ``openai`` client, unmodified, reads every new shape of the simulator: legacy
completions (streamed with usage), chat logprobs, structured outputs parsed into a model,
parallel tool calls assembled from a stream, embeddings in both encodings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import pydantic
import pytest
from openai import AsyncOpenAI

from tests.simulator.conftest import EMBED_DIM, EMBED_MODEL, MODEL, TOKENS
from tests.support.simulator import SimulatorProcess


class Person(pydantic.BaseModel):
    name: str
    age: int
    role: Literal["admin", "user"]
    nickname: str | None
    tags: list[str]


@pytest.fixture
async def sdk(sim: SimulatorProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=sim.base_url, api_key="unused", max_retries=0) as client:
        yield client


async def test_completions(sdk: AsyncOpenAI) -> None:
    completion = await sdk.completions.create(model=MODEL, prompt=["One", "Two"], n=2, echo=True)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert completion.choices[2].text.startswith("Two")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4 * TOKENS

    stream = await sdk.completions.create(
        model=MODEL, prompt="One", logprobs=2, stream=True, stream_options={"include_usage": True}
    )
    texts, usage = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            texts.append(choice.text)
            assert choice.logprobs is not None
        usage = chunk.usage or usage
    assert usage is not None
    assert usage.completion_tokens == TOKENS
    assert len(texts) == TOKENS


async def test_chat_logprobs(sdk: AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        logprobs=True,
        top_logprobs=2,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert "".join(t.token for t in logprobs.content) == completion.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in logprobs.content)


async def test_structured_outputs_parse_into_a_model(sdk: AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Mina"}],
        response_format=Person,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert parsed.role in ("admin", "user")


async def test_parallel_tool_calls_assemble_from_a_stream(sdk: AsyncOpenAI) -> None:
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("get_weather", "get_time")
    ]
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "get_weather and get_time please"}],
        tools=tools,  # type: ignore[arg-type]
        stream=True,
    )
    calls: dict[int, list[str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, ["", ""])
                assert delta.function is not None
                call[0] += delta.function.name or ""
                call[1] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert [calls[i][0] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert finish == "tool_calls"


async def test_embeddings(embedder: SimulatorProcess) -> None:
    async with AsyncOpenAI(base_url=embedder.base_url, api_key="unused", max_retries=0) as sdk:
        # The SDK asks for base64 by default and decodes it itself.
        default = await sdk.embeddings.create(model=EMBED_MODEL, input=["a", "b"])
        floats = await sdk.embeddings.create(
            model=EMBED_MODEL, input=["a", "b"], encoding_format="float"
        )
        short = await sdk.embeddings.create(model=EMBED_MODEL, input="a", dimensions=16)
    assert [len(item.embedding) for item in default.data] == [EMBED_DIM, EMBED_DIM]
    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    assert len(short.data[0].embedding) == 16
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
