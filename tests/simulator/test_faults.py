"""Fault injection: the X-Sim-* headers, the fault flags, and /sim/health."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.simulator.conftest import TOKENS, chat_body, parse_sse
from tests.simulator.rawhttp import RawConnection
from tests.support.simulator import SimulatorProcess, running_simulator

URL = "/v1/chat/completions"
ENGINE_DEAD = "EngineCore encountered an issue"


async def faulty(client: httpx.AsyncClient, fault: str, **extra: Any) -> httpx.Response:
    return await client.post(URL, json=chat_body(**extra), headers={"X-Sim-Fault": fault})


def content_events(events: list[Any]) -> list[Any]:
    return [
        e
        for e in events
        if isinstance(e, dict)
        and e.get("choices")
        and "content" in e["choices"][0]["delta"]
        and "role" not in e["choices"][0]["delta"]
    ]


async def test_fault_500_is_internal_server_error_json(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    for stream in (False, True):
        response = await faulty(client, "500", stream=stream)
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "InternalServerError"
        assert error["code"] == 500
        assert error["param"] is None
        assert error["message"].startswith(ENGINE_DEAD)
    assert (await fresh.stats_async())["faults"] == {"500": 2}


async def test_fault_empty500_has_no_body(client: httpx.AsyncClient) -> None:
    response = await faulty(client, "empty500")
    assert (response.status_code, response.content) == (500, b"")


async def test_fault_503_is_the_elastic_ep_body(client: httpx.AsyncClient) -> None:
    response = await faulty(client, "503", stream=True)
    assert response.status_code == 503
    assert response.json() == {"error": "The model is currently scaling. Please try again later."}


@pytest.mark.parametrize("count", [0, 1, 3])
async def test_fault_cut_sends_error_event_then_done(client: httpx.AsyncClient, count: int) -> None:
    response = await faulty(
        client, f"cut:{count}", stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    events = parse_sse(response.content)
    assert "role" in events[0]["choices"][0]["delta"]
    assert len(content_events(events)) == count
    assert events[-1] == "[DONE]"
    assert events[-2] == {
        "error": {
            "message": events[-2]["error"]["message"],
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert all("usage" not in event for event in events if isinstance(event, dict))


async def test_fault_cut_beyond_the_reply_does_nothing(client: httpx.AsyncClient) -> None:
    response = await faulty(client, f"cut:{TOKENS}", stream=True)
    events = parse_sse(response.content)
    assert len(content_events(events)) == TOKENS
    assert all("error" not in event for event in events[:-1])


async def test_fault_cut_without_stream_is_500(client: httpx.AsyncClient) -> None:
    response = await faulty(client, "cut:2")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalServerError"


async def test_fault_drop_closes_the_connection_mid_stream(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    received: list[str] = []

    async def read_all() -> None:
        async with client.stream(
            "POST", URL, json=chat_body(stream=True), headers={"X-Sim-Fault": "drop:2"}
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                received.append(line)

    with pytest.raises(httpx.RemoteProtocolError):
        await read_all()
    assert sum('"content"' in line for line in received) == 3  # role chunk + 2 tokens
    stats = await fresh.wait_for_async(lambda s: s["in_flight"] == 0)
    assert stats["faults"] == {"drop": 1}


async def test_fault_drop_without_stream_truncates_the_body(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await faulty(client, "drop:1")


async def test_fault_hang_never_answers_and_aborts_on_disconnect(
    fresh: SimulatorProcess,
) -> None:
    conn = await RawConnection.post_json(fresh.port, URL, chat_body(), {"X-Sim-Fault": "hang"})
    with pytest.raises(asyncio.TimeoutError):
        await conn.read_head(within=0.3)
    stats = await fresh.stats_async()
    assert stats["in_flight"] == 1
    async with httpx.AsyncClient(base_url=fresh.root_url) as http:
        assert (await http.get("/load")).json() == {"server_load": 1}
    await conn.close()
    stats = await fresh.wait_for_async(lambda s: s["in_flight"] == 0)
    assert stats["aborted"] == 1
    assert stats["faults"] == {"hang": 1}


async def test_fault_stall_stops_mid_stream_and_aborts_on_disconnect(
    fresh: SimulatorProcess,
) -> None:
    conn = await RawConnection.post_json(
        fresh.port, URL, chat_body(stream=True), {"X-Sim-Fault": "stall:2"}
    )
    head = await conn.read_head()
    assert head.startswith(b"HTTP/1.1 200")
    with pytest.raises(asyncio.TimeoutError):
        await conn.read_until(b"[DONE]", within=0.3)
    assert (await fresh.stats_async())["in_flight"] == 1
    await conn.close()
    stats = await fresh.wait_for_async(lambda s: s["in_flight"] == 0)
    assert stats["aborted"] == 1


async def test_fault_none_overrides_nothing_on_a_healthy_default(client: httpx.AsyncClient) -> None:
    assert (await faulty(client, "none")).status_code == 200
    assert (await faulty(client, "NONE")).status_code == 200


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Sim-Fault", "explode"),
        ("X-Sim-Fault", "cut:x"),
        ("X-Sim-Fault", "500:3"),
        ("X-Sim-Fault", "cut:-1"),
        ("X-Sim-TTFT-Ms", "soon"),
        ("X-Sim-ITL-Ms", "-5"),
        ("X-Sim-ITL-Ms", "nan"),
        ("X-Sim-Tokens", "0"),
        ("X-Sim-Tokens", "1.5"),
    ],
)
async def test_bad_override_headers_are_400(
    client: httpx.AsyncClient, name: str, value: str
) -> None:
    response = await client.post(URL, json=chat_body(), headers={name: value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == name


async def test_sim_health_kills_and_revives_the_engine(
    client: httpx.AsyncClient, fresh: SimulatorProcess
) -> None:
    fresh.set_healthy(False)
    try:
        response = await client.post(URL, json=chat_body(stream=True))
        assert response.status_code == 500
        assert response.json()["error"]["message"].startswith(ENGINE_DEAD)
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.post(URL, json=chat_body(model="nope"))).status_code == 404
    finally:
        fresh.set_healthy(True)
    assert (await client.post(URL, json=chat_body())).status_code == 200
    bad = await client.post("/sim/health", json={"healthy": "maybe"})
    assert bad.status_code == 400


@pytest.fixture(scope="module")
def unhealthy_sim() -> Iterator[SimulatorProcess]:
    with running_simulator("--unhealthy") as process:
        yield process


async def test_unhealthy_flag(unhealthy_sim: SimulatorProcess) -> None:
    async with httpx.AsyncClient(base_url=unhealthy_sim.root_url) as http:
        assert (await http.get("/health")).status_code == 503
        response = await http.post(URL, json=chat_body())
        assert response.status_code == 500
        assert response.json()["error"]["message"].startswith(ENGINE_DEAD)
    unhealthy_sim.set_healthy(True)
    async with httpx.AsyncClient(base_url=unhealthy_sim.root_url) as http:
        assert (await http.get("/health")).status_code == 200


async def test_fail_rate_one_fails_every_chat_unless_overridden() -> None:
    with running_simulator("--fail-rate", "1") as sim:
        async with httpx.AsyncClient(base_url=sim.root_url) as http:
            for _ in range(3):
                response = await http.post(URL, json=chat_body())
                assert response.status_code == 500
                assert response.json()["error"]["type"] == "InternalServerError"
            ok = await http.post(URL, json=chat_body(), headers={"X-Sim-Fault": "none"})
            assert ok.status_code == 200
            assert (await http.get("/health")).status_code == 200


async def test_fail_rate_is_repeatable_from_the_seed() -> None:
    with running_simulator("--fail-rate", "0.5", "--seed", "11") as sim:
        async with httpx.AsyncClient(base_url=sim.root_url) as http:

            async def run() -> list[int]:
                return [(await http.post(URL, json=chat_body())).status_code for _ in range(20)]

            first = await run()
            sim.reset()
            second = await run()
    assert first == second
    assert 200 in first
    assert 500 in first


async def test_hang_rate_one_hangs_every_chat() -> None:
    with running_simulator("--hang-rate", "1") as sim:
        async with httpx.AsyncClient(base_url=sim.root_url, timeout=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(URL, json=chat_body())
            stats = await sim.wait_for_async(lambda s: s["in_flight"] == 0)
            assert stats["aborted"] == 1
            assert (
                await http.post(URL, json=chat_body(), headers={"X-Sim-Fault": "none"})
            ).status_code == 200


async def test_cut_after_flag_cuts_every_stream() -> None:
    with running_simulator("--cut-after", "2") as sim:
        async with httpx.AsyncClient(base_url=sim.root_url) as http:
            events = parse_sse((await http.post(URL, json=chat_body(stream=True))).content)
            assert len(content_events(events)) == 2
            assert events[-2]["error"]["code"] == 500
            assert events[-1] == "[DONE]"
            whole = await http.post(
                URL, json=chat_body(stream=True), headers={"X-Sim-Fault": "none"}
            )
            assert "error" not in whole.text
