"""The aiohttp-backed httpx transport: the exceptions httpcore would raise, no buffering of
streams, timeouts, and an early close that the upstream notices at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from functions.core.llm.transport import AiohttpTransport, build_http_client
from functions.core.settings import load_settings
from tests.core.llm.conftest import MODEL, connections_to, sim_stats, wait_for_stats
from tests.core.llm.scripted_server import BlackHole, ScriptedServer, closed_port_url
from tests.support.simulator import SimulatorProcess

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=AiohttpTransport(), timeout=httpx.Timeout(5.0, connect=0.3)
    ) as client:
        yield client


async def test_refused_connection_is_a_connect_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await http.post(f"{closed_port_url()}/chat/completions", json=BODY)


async def test_connect_timeout(http: httpx.AsyncClient) -> None:
    hole = BlackHole()
    try:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await http.post(f"{hole.base_url}/chat/completions", json=BODY)
        assert time.monotonic() - started < 2.0
    finally:
        hole.close()


async def test_hang_up_after_the_request_was_sent_is_not_a_connect_error(
    http: httpx.AsyncClient,
) -> None:
    # The one case a retry must never treat as "nothing was sent".
    async with ScriptedServer(None) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"{server.base_url}/chat/completions", json=BODY)
    assert len(server.requests) == 1


async def test_read_timeout(http: httpx.AsyncClient, fresh: SimulatorProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            f"{fresh.base_url}/chat/completions",
            json=BODY,
            headers={"X-Sim-Fault": "hang"},
            timeout=httpx.Timeout(5.0, read=0.2),
        )


async def test_stream_arrives_as_it_is_sent(
    http: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    arrivals: list[float] = []
    started = time.monotonic()
    headers = {"X-Sim-ITL-Ms": "80", "X-Sim-Tokens": "5"}
    async with http.stream(
        "POST", f"{fresh.base_url}/chat/completions", json={**BODY, "stream": True}, headers=headers
    ) as response:
        async for _ in response.aiter_raw():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 5
    # Chunks come one ITL apart; a buffering transport would deliver them all at the end.
    assert arrivals[-1] - arrivals[0] >= 0.25


async def test_closing_a_stream_early_aborts_upstream(
    http: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    headers = {"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "200"}
    async with http.stream(
        "POST", f"{fresh.base_url}/chat/completions", json={**BODY, "stream": True}, headers=headers
    ) as response:
        async for _ in response.aiter_raw():
            break
        assert (await sim_stats(fresh))["chat_in_flight"] == 1
    stats = await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0)
    assert stats["aborted"] == 1


async def test_keep_alive_reuses_connections(fresh: SimulatorProcess) -> None:
    before = connections_to(fresh.port)
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        for _ in range(5):
            response = await http.post(f"{fresh.base_url}/chat/completions", json=BODY)
            assert response.status_code == 200
        # One pooled connection served all five requests, one after the other.
        assert connections_to(fresh.port) == before + 1


async def test_the_shared_client_keeps_no_cookies_between_callers() -> None:
    """An upstream's Set-Cookie must not ride along on the next caller's request."""
    settings = load_settings({}, dotenv=None)
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: session=abc\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    async with ScriptedServer(response) as server, build_http_client(settings) as client:
        await client.post(f"{server.base_url}/chat/completions", json=BODY)
        await client.post(f"{server.base_url}/chat/completions", json=BODY)
        assert len(client.cookies) == 0
        assert all(b"cookie:" not in request.lower() for request in server.requests)
