"""``embeddings.create`` through the door with the official SDK: an embedding server named
in ``SWITCHBOARD_EMBEDDING_URLS`` answers, the call is counted in the usage ledger, and
nothing is stored as a conversation.

The session's gateway has no embedding server, so this module runs one more gateway on the
same database (PostgreSQL and SQLite) with a chat simulator and an embedding simulator.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from functions.core.db.sql import fetch
from tests.functions.openai.conftest import Door, secret_of
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

EMBED_MODEL = "embed-model"
DIMENSIONS = 16


@pytest.fixture(scope="module")
def embedder() -> Iterator[SimulatorProcess]:
    process = SimulatorProcess(
        "--model", EMBED_MODEL, "--runner", "pooling", "--embedding-dim", str(DIMENSIONS)
    ).start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def embedding_gateway(
    backend_url: str, simulators: dict[str, SimulatorProcess], embedder: SimulatorProcess
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        backend_url,
        [simulators["sim-model"].base_url],
        env={"SWITCHBOARD_EMBEDDING_URLS": embedder.base_url},
    )
    with process:
        yield process


@pytest.fixture
async def alice(door: Door, embedding_gateway: GatewayProcess) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(
        base_url=f"{embedding_gateway.root_url}/v1",
        api_key=secret_of(door.api.alice),
        max_retries=0,
        timeout=scaled(15.0),
    )
    try:
        yield client
    finally:
        await client.close()


async def vllms_own(embedder: SimulatorProcess, text: str) -> list[float]:
    """The vector the embedding server itself gives ``text``."""
    async with httpx.AsyncClient(base_url=embedder.base_url) as client:
        response = await client.post(
            "/embeddings", json={"model": EMBED_MODEL, "input": text, "encoding_format": "float"}
        )
    assert response.status_code == 200, response.text
    vector: list[float] = response.json()["data"][0]["embedding"]
    return vector


async def ledger() -> list[dict[str, Any]]:
    """The usage ledger's rows, with the name of the key charged."""
    return await fetch(
        "SELECT u.*, k.name AS key_name FROM usage_ledger u "
        "JOIN api_key k ON k.id = u.owner_key ORDER BY u.asked_at"
    )


def vector(embedding: list[float] | str) -> list[float]:
    """A vector as given, or decoded from base64 (float32, little-endian, as vLLM sends)."""
    if isinstance(embedding, str):
        return list(array("f", base64.b64decode(embedding)))
    return embedding


# None: the SDK's default, which asks for base64 and decodes it into floats itself.
@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
async def test_embeddings_are_vllms_counted_and_not_stored(
    door: Door, alice: AsyncOpenAI, embedder: SimulatorProcess, encoding_format: Any
) -> None:
    options = {} if encoding_format is None else {"encoding_format": encoding_format}
    raw = await alice.embeddings.with_raw_response.create(
        model=EMBED_MODEL, input="hello world", **options
    )
    answer = raw.parse()
    assert raw.headers["x-request-id"]
    assert answer.model == EMBED_MODEL
    (item,) = answer.data
    assert isinstance(item.embedding, str) is (encoding_format == "base64")
    got = vector(item.embedding)
    assert got == pytest.approx(await vllms_own(embedder, "hello world"), abs=1e-6)
    assert len(got) == DIMENSIONS
    assert answer.usage.prompt_tokens > 0
    # vLLM got the request as sent.
    sent = (await embedder.stats_async())["last_chat_request"]["body"]
    assert sent["encoding_format"] == encoding_format or "base64"
    assert sent["input"] == "hello world"

    (row,) = await ledger()
    assert row["key_name"] == "alice"
    assert row["model"] == EMBED_MODEL
    assert row["status"] == "complete"
    assert row["prompt_tokens"] == answer.usage.prompt_tokens
    assert row["completion_tokens"] == 0
    assert row["upstream"] == embedder.base_url
    assert row["llm_config"] is None
    # Nothing stored as a conversation.
    assert await door.conversations() == []
    assert await fetch("SELECT id FROM conversation") == []


async def test_a_list_of_inputs_and_token_ids(
    alice: AsyncOpenAI, embedder: SimulatorProcess
) -> None:
    answer = await alice.embeddings.create(
        model=EMBED_MODEL, input=["first", "second"], encoding_format="float"
    )
    assert [item.index for item in answer.data] == [0, 1]
    assert answer.data[1].embedding == pytest.approx(await vllms_own(embedder, "second"), abs=1e-6)
    tokens = await alice.embeddings.create(model=EMBED_MODEL, input=[[1, 2, 3]])
    assert len(tokens.data[0].embedding) == DIMENSIONS
    rows = await ledger()
    assert [row["prompt_tokens"] for row in rows] == [
        answer.usage.prompt_tokens,
        tokens.usage.prompt_tokens,
    ]


async def test_a_chat_model_is_a_400_and_an_unknown_model_a_404(alice: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat_model:
        await alice.embeddings.create(model="sim-model", input="hello")
    assert chat_model.value.code == "model_kind_mismatch"
    assert chat_model.value.param == "model"
    assert "does not support the Embeddings API" in chat_model.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        await alice.embeddings.create(model="no-such-model", input="hello")
    assert unknown.value.code == "model_not_served"
    # Refused before anything was sent: nothing counted.
    assert await ledger() == []


async def test_an_embedding_model_generates_nothing(alice: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        await alice.chat.completions.create(
            model=EMBED_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert chat.value.code == "model_kind_mismatch"
    with pytest.raises(openai.BadRequestError) as completion:
        await alice.completions.create(model=EMBED_MODEL, prompt="hi")
    assert completion.value.code == "model_kind_mismatch"


async def test_vllms_refusal_is_its_400_and_counted_as_failed(alice: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await alice.embeddings.create(model=EMBED_MODEL, input="hello", dimensions=8)
    assert "does not support matryoshka representation" in caught.value.message
    (row,) = await ledger()
    assert row["status"] == "failed"
    assert row["error_code"] == "llm_bad_request"
    assert row["prompt_tokens"] is None


async def test_context_length_is_vllms_400(alice: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await alice.embeddings.create(model=EMBED_MODEL, input="word " * 9000)
    assert "maximum context length" in caught.value.message
    assert caught.value.code == "context_length_exceeded"


async def test_the_model_list_holds_the_embedding_model(alice: AsyncOpenAI) -> None:
    listed = {model.id async for model in alice.models.list()}
    assert {EMBED_MODEL, "sim-model"} <= listed
    model = await alice.models.retrieve(EMBED_MODEL)
    assert model.id == EMBED_MODEL
