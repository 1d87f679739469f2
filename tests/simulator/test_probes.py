"""Contract §1 and the FastAPI defaults: probes, /version, /load, /v1/models, 404/405."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.simulator.conftest import MAX_MODEL_LEN, MODEL, OTHER_MODEL
from tests.support.simulator import SimulatorProcess


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")]
)
async def test_probes_answer_empty_200(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 200
    assert response.content == b""


async def test_probes_answer_503_when_engine_dead(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    fresh.set_healthy(False)
    try:
        for method, path in [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")]:
            response = await client.request(method, path)
            assert (response.status_code, response.content) == (503, b"")
        assert fresh.stats()["healthy"] is False
    finally:
        fresh.set_healthy(True)
    assert (await client.get("/health")).status_code == 200


async def test_head_is_not_a_probe(client: httpx.AsyncClient) -> None:
    # FastAPI adds no HEAD route (fastapi#1773): probe with GET.
    response = await client.head("/health")
    assert response.status_code == 405


async def test_version_says_vllm_version_and_simulator(client: httpx.AsyncClient) -> None:
    body = (await client.get("/version")).json()
    assert body["version"] == "0.20.2"
    assert body["simulator"] == "switchboard-sim-vllm"


async def test_load_counts_chat_requests_in_flight(client: httpx.AsyncClient) -> None:
    response = await client.get("/load")
    assert response.json() == {"server_load": 0}


async def test_models_full_card_shape(client: httpx.AsyncClient) -> None:
    before = int(time.time())
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["object", "data"]
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == [MODEL, OTHER_MODEL]
    for card in body["data"]:
        assert list(card) == [
            "id",
            "object",
            "created",
            "owned_by",
            "root",
            "parent",
            "max_model_len",
            "permission",
        ]
        assert card["object"] == "model"
        assert card["owned_by"] == "vllm"
        assert card["root"] == MODEL
        assert card["parent"] is None
        assert card["max_model_len"] == MAX_MODEL_LEN
        assert before <= card["created"] <= int(time.time())  # time of the call
        (permission,) = card["permission"]
        assert permission["id"].startswith("modelperm-")
        assert permission == {
            "id": permission["id"],
            "object": "model_permission",
            "created": card["created"],
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }


async def test_no_route_for_a_single_model(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/models/{MODEL}")
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize("path", ["/nope", "/v1/completions/x", "/v2/models", "/"])
async def test_unknown_path_is_fastapi_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/health", "GET"),
        ("GET", "/tokenize", "POST"),
    ],
)
async def test_wrong_method_is_fastapi_405(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == allow
