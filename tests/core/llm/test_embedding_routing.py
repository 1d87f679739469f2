"""Embedding servers in the pool: embeddings go only to them, chat and completions never,
and a model served only by the other kind is a 400 before anything is sent; and
``embed_raw`` against a real embedding simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from functions.core.llm.errors import LLMBadRequestError, ModelKindError, ModelNotServedError
from functions.core.llm.upstreams import UpstreamPool
from functions.core.settings import SettingsError, load_settings
from tests.core.llm.conftest import MODEL, Clock, MakeClient
from tests.support.simulator import SimulatorProcess, running_simulator

CHAT, EMBED = "http://chat:8000/v1", "http://embed:8000/v1"
EMBED_MODEL = "embed-model"


def mixed_pool() -> UpstreamPool:
    pool = UpstreamPool(
        [CHAT],
        embedding_urls=[EMBED],
        max_in_flight=4,
        eject_after=2,
        cooldown_s=5.0,
        clock=Clock(),
    )
    chat, embed = pool.upstreams
    pool.set_models(chat, ["chat-model"])
    pool.set_models(embed, [EMBED_MODEL])
    return pool


def test_each_kind_goes_to_its_own_servers() -> None:
    pool = mixed_pool()

    def picked(model: str | None, *, embeddings: bool = False) -> str:
        lease = pool.acquire(model, embeddings=embeddings)
        pool.release(lease)
        return lease.upstream.id

    assert picked(EMBED_MODEL, embeddings=True) == "embed:8000"
    assert picked("chat-model") == "chat:8000"
    # A chat without a model never lands on an embedding server.
    assert {picked(None) for _ in range(6)} == {"chat:8000"}
    assert [u.embeddings for u in pool.upstreams] == [False, True]


def test_a_model_of_the_other_kind_is_a_400_naming_model() -> None:
    pool = mixed_pool()
    with pytest.raises(ModelKindError) as embedding:
        pool.acquire("chat-model", embeddings=True)
    assert "does not support the Embeddings API" in embedding.value.message
    assert embedding.value.details["field"] == "model"
    assert embedding.value.status_code == 400
    with pytest.raises(ModelKindError):
        pool.acquire(EMBED_MODEL)
    with pytest.raises(ModelNotServedError):
        pool.acquire("nobody-serves-this", embeddings=True)
    assert all(u.in_flight == 0 for u in pool.upstreams)


@pytest.fixture(scope="module")
def embedder() -> Iterator[SimulatorProcess]:
    with running_simulator(
        "--model", EMBED_MODEL, "--runner", "pooling", "--embedding-dim", "8"
    ) as process:
        yield process


async def test_embed_raw_passes_the_answer_through(
    sim: SimulatorProcess, embedder: SimulatorProcess, make_client: MakeClient
) -> None:
    client = make_client(sim.base_url, embedding_urls=(embedder.base_url,))
    answer = await client.embed_raw(
        {"input": ["a", "b"], "encoding_format": "float"}, model=EMBED_MODEL
    )
    assert answer.body.startswith(b"{")
    assert b'"object":"list"' in answer.body.replace(b" ", b"")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert answer.upstream_url == embedder.base_url
    assert {info.id for info in await client.list_models()} == {MODEL, EMBED_MODEL}
    with pytest.raises(ModelKindError):
        await client.embed_raw({"input": "a"}, model=MODEL)
    with pytest.raises(LLMBadRequestError) as refused:
        await client.embed_raw({"input": "a", "dimensions": 4}, model=EMBED_MODEL)
    assert "matryoshka" in refused.value.message


def test_the_setting_is_a_list_of_base_urls_checked_as_the_llm_urls() -> None:
    settings = load_settings(
        {"SWITCHBOARD_EMBEDDING_URLS": "http://e1:8000/v1/, http://e2:8000/v1"}, dotenv=None
    )
    assert settings.embedding_urls == ("http://e1:8000/v1", "http://e2:8000/v1")
    assert load_settings({}, dotenv=None).embedding_urls == ()
    with pytest.raises(SettingsError, match="SWITCHBOARD_EMBEDDING_URLS"):
        load_settings({"SWITCHBOARD_EMBEDDING_URLS": "http://u:secret@e1:8000/v1"}, dotenv=None)
