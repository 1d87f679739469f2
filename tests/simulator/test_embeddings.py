"""An embedding model (``--runner pooling``), as vLLM's ``pooling/embed`` serves one:
``/v1/embeddings`` with deterministic unit vectors, ``float``/``base64``, ``dimensions`` only
for a matryoshka model, usage; no chat or completions; and a chat model's refusal of it."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.simulator.conftest import EMBED_CONTEXT, EMBED_DIM, EMBED_MODEL, MODEL
from tests.simulator.rawhttp import RawConnection
from tests.support.simulator import SimulatorProcess


@pytest.fixture
async def embed_client(embedder: SimulatorProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=embedder.root_url, timeout=10.0) as http:
        yield http


async def embed(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post("/v1/embeddings", json={"model": EMBED_MODEL, **body})


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


async def test_the_shape_usage_and_unit_vectors(embed_client: httpx.AsyncClient) -> None:
    response = await embed(embed_client, input=["hello world", "안녕하세요 🌊"])
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["id", "object", "created", "model", "data", "usage"]
    assert body["id"].startswith("embd-")
    assert (body["object"], body["model"]) == ("list", EMBED_MODEL)
    assert [list(item) for item in body["data"]] == [["index", "object", "embedding"]] * 2
    assert [(d["index"], d["object"]) for d in body["data"]] == [(0, "embedding"), (1, "embedding")]
    for item in body["data"]:
        assert len(item["embedding"]) == EMBED_DIM
        assert _norm(item["embedding"]) == pytest.approx(1.0, abs=1e-5)
    counts = []
    for text in ("hello world", "안녕하세요 🌊"):
        tokenized = await embed_client.post("/tokenize", json={"prompt": text})
        counts.append(tokenized.json()["count"])
    assert body["usage"] == {
        "prompt_tokens": sum(counts),
        "total_tokens": sum(counts),
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


async def test_vectors_are_deterministic_and_differ_by_input(
    embed_client: httpx.AsyncClient,
) -> None:
    first = (await embed(embed_client, input="alpha")).json()["data"][0]["embedding"]
    again = (await embed(embed_client, input=["alpha"])).json()["data"][0]["embedding"]
    other = (await embed(embed_client, input="beta")).json()["data"][0]["embedding"]
    assert first == again
    assert first != other


async def test_token_inputs_embed_like_their_text(embed_client: httpx.AsyncClient) -> None:
    ids = (await embed_client.post("/tokenize", json={"prompt": "alpha beta"})).json()["tokens"]
    text = (await embed(embed_client, input="alpha beta")).json()
    for shape in (ids, [ids, ids]):
        body = (await embed(embed_client, input=shape)).json()
        assert body["data"][0]["embedding"] == text["data"][0]["embedding"]
        assert body["usage"]["prompt_tokens"] == len(ids) * len(body["data"])


async def test_base64_carries_the_same_float32_values(embed_client: httpx.AsyncClient) -> None:
    floats = (await embed(embed_client, input="gamma")).json()["data"][0]["embedding"]
    encoded = (await embed(embed_client, input="gamma", encoding_format="base64")).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack(f"<{EMBED_DIM}f", raw)) == floats


async def test_matryoshka_dimensions_truncate_and_renormalize(
    embed_client: httpx.AsyncClient,
) -> None:
    full = (await embed(embed_client, input="delta")).json()["data"][0]["embedding"]
    short = (await embed(embed_client, input="delta", dimensions=16)).json()["data"][0]["embedding"]
    assert len(short) == 16
    assert _norm(short) == pytest.approx(1.0, abs=1e-5)
    scale = _norm(full[:16])
    assert short == pytest.approx([v / scale for v in full[:16]], abs=1e-6)

    refused = await embed(embed_client, input="delta", dimensions=20)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": f"Model '{EMBED_MODEL}' only supports [16, 32] matryoshka dimensions, use "
        "other output dimensions will lead to poor results.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


async def test_a_model_that_is_not_matryoshka_refuses_dimensions(
    plain_embedder: SimulatorProcess,
) -> None:
    async with httpx.AsyncClient(base_url=plain_embedder.root_url, timeout=10.0) as http:
        response = await embed(http, input="x", dimensions=8)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f'Model "{EMBED_MODEL}" does not support matryoshka representation, '
        "changing output dimensions will lead to poor results.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ["a", 1]}, 400, "input"),
        ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "x", "model": "nope"}, 404, "model"),
        ({"input": "word " * 40}, 400, "input_tokens"),
    ],
)
async def test_bad_requests(
    embed_client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    response = await embed_client.post("/v1/embeddings", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


async def test_an_embedding_model_serves_no_generation(embed_client: httpx.AsyncClient) -> None:
    # vLLM registers only the routes of the model's tasks: FastAPI's plain 404.
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", {"prompt": "hi"})):
        response = await embed_client.post(path, json=body)
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    models = (await embed_client.get("/v1/models")).json()["data"]
    assert [(card["id"], card["max_model_len"]) for card in models] == [
        (EMBED_MODEL, EMBED_CONTEXT)
    ]


async def test_a_chat_model_serves_no_embeddings(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


async def test_the_chat_form_embeds_messages(embed_client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "hello"}]
    body = (await embed(embed_client, messages=messages)).json()
    assert len(body["data"][0]["embedding"]) == EMBED_DIM
    tokenized = await embed_client.post(
        "/tokenize", json={"messages": messages, "add_generation_prompt": False}
    )
    assert body["usage"]["prompt_tokens"] == tokenized.json()["count"]


async def test_the_last_embedding_request_is_recorded_for_tests(
    embedder: SimulatorProcess, embed_client: httpx.AsyncClient
) -> None:
    await embed(embed_client, input=["one", "two"], user="u-9", dimensions=32)
    recorded = (await embedder.stats_async())["last_chat_request"]
    assert recorded["body"] == {
        "model": EMBED_MODEL,
        "input": ["one", "two"],
        "user": "u-9",
        "dimensions": 32,
    }


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        ("500", 500, None),
        ("cut:1", 500, None),
        ("empty500", 500, b""),
        ("503", 503, b'{"error":"The model is currently scaling. Please try again later."}'),
    ],
)
async def test_faults_fail_an_embedding_request(
    embed_client: httpx.AsyncClient, fault: str, status: int, body: bytes | None
) -> None:
    response = await embed_client.post(
        "/v1/embeddings",
        json={"model": EMBED_MODEL, "input": "x"},
        headers={"X-Sim-Fault": fault},
    )
    assert response.status_code == status
    if body is None:
        assert response.json()["error"]["type"] == "InternalServerError"
    else:
        assert response.content == body


async def test_a_dropped_answer_is_half_a_body(embed_client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await embed_client.post(
            "/v1/embeddings",
            json={"model": EMBED_MODEL, "input": "x"},
            headers={"X-Sim-Fault": "drop:1"},
        )


async def test_a_client_that_leaves_a_slow_embedding_aborts_it(embedder: SimulatorProcess) -> None:
    await embedder.fresh()
    conn = await RawConnection.post_json(
        embedder.port,
        "/v1/embeddings",
        {"model": EMBED_MODEL, "input": "slow"},
        {"X-Sim-TTFT-Ms": "60000"},
    )
    await embedder.wait_for_async(lambda s: s["chat_in_flight"] == 1)
    async with httpx.AsyncClient(base_url=embedder.root_url, timeout=10.0) as http:
        assert (await http.get("/load")).json() == {"server_load": 1}
    await conn.close()
    stats = await embedder.wait_for_async(lambda s: s["in_flight"] == 0)
    assert (stats["aborted"], stats["chat_in_flight"]) == (1, 0)


async def test_a_hung_embedding_answers_nothing_until_the_client_leaves(
    embedder: SimulatorProcess,
) -> None:
    await embedder.fresh()
    conn = await RawConnection.post_json(
        embedder.port,
        "/v1/embeddings",
        {"model": EMBED_MODEL, "input": "x"},
        {"X-Sim-Fault": "hang"},
    )
    with pytest.raises(TimeoutError):
        await conn.read_head(within=0.3)
    await conn.close()
    stats = await embedder.wait_for_async(lambda s: s["in_flight"] == 0)
    assert stats["aborted"] == 1
    assert stats["faults"] == {"hang": 1}
