"""Contract §6: --api-key guards /v1* only, any of several keys, scheme case-insensitive."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from functions.simulator.app import create_app
from functions.simulator.options import SimulatorOptions
from tests.simulator.conftest import chat_body
from tests.support.simulator import SimulatorProcess, running_simulator

UNAUTHORIZED = {"error": "Unauthorized"}


@pytest.fixture(scope="module")
def auth_sim() -> Iterator[SimulatorProcess]:
    with running_simulator("--api-key", "key-one", "--api-key", "key-two") as process:
        yield process


@pytest.fixture
async def http(auth_sim: SimulatorProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_sim.root_url) as client:
        yield client


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "key-one", "Basic key-one", "Bearer", "Bearer key-one-and-more", ""],
)
async def test_v1_paths_need_a_valid_key(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
        response = await http.request(method, path, headers=headers, json=chat_body())
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(
    "authorization", ["Bearer key-one", "Bearer key-two", "bearer key-one", "BEARER key-two"]
)
async def test_any_key_and_any_scheme_case_pass(
    http: httpx.AsyncClient, authorization: str
) -> None:
    headers = {"Authorization": authorization}
    assert (await http.get("/v1/models", headers=headers)).status_code == 200
    response = await http.post("/v1/chat/completions", headers=headers, json=chat_body())
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/ping"),
        ("GET", "/version"),
        ("GET", "/load"),
        ("GET", "/metrics"),
    ],
)
async def test_other_paths_stay_open(http: httpx.AsyncClient, method: str, path: str) -> None:
    assert (await http.request(method, path)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/sim/stats", None),
        ("POST", "/sim/health", {"healthy": False}),
        ("POST", "/sim/reset", None),
    ],
)
async def test_the_simulators_own_controls_need_a_key_too(
    http: httpx.AsyncClient, method: str, path: str, body: object
) -> None:
    for authorization in (None, "Bearer wrong"):
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await http.request(method, path, headers=headers, json=body)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    # Nothing happened: the engine is still alive.
    assert (await http.get("/health")).status_code == 200
    keyed = await http.request(method, path, headers={"Authorization": "Bearer key-two"}, json=body)
    assert keyed.status_code == 200
    if path == "/sim/health":
        await http.post(
            "/sim/health", headers={"Authorization": "Bearer key-two"}, json={"healthy": True}
        )


async def test_stats_never_show_a_key_or_a_prompt(auth_sim: SimulatorProcess) -> None:
    """Recording (a test knob) shows the prompt to a keyed caller, never the key itself."""
    headers = {"Authorization": "Bearer key-one"}
    async with httpx.AsyncClient(base_url=auth_sim.root_url, headers=headers) as client:
        sent = await client.post("/v1/chat/completions", json=chat_body("a secret prompt: rosebud"))
        assert sent.status_code == 200
        stats = (await client.get("/sim/stats")).json()
    recorded = stats["last_chat_request"]
    assert recorded["headers"]["authorization"] == "Bearer [redacted]"
    assert "key-one" not in str(stats)


async def test_without_record_requests_the_last_prompt_is_not_kept() -> None:
    app = create_app(SimulatorOptions())  # the defaults, as `switchboard dev` runs it
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        sent = await client.post("/v1/chat/completions", json=chat_body("rosebud"))
        assert sent.status_code == 200
        stats = (await client.get("/sim/stats")).json()
    assert stats["last_chat_request"] is None
    assert "rosebud" not in str(stats)


async def test_tokenize_stays_open(http: httpx.AsyncClient) -> None:
    response = await http.post("/tokenize", json={"prompt": "hello"})
    assert response.status_code == 200


async def test_auth_runs_before_routing_on_v1(http: httpx.AsyncClient) -> None:
    # The middleware sits in front of the router: an unknown /v1 path is 401, not 404.
    assert (await http.get("/v1/nothing-here")).json() == UNAUTHORIZED
    assert (await http.get("/nothing-here")).json() == {"detail": "Not Found"}


async def test_options_passes_auth(http: httpx.AsyncClient) -> None:
    response = await http.options("/v1/chat/completions")
    assert response.status_code == 405  # through auth, then no OPTIONS route
