"""Retries happen only where the upstream cannot have started the work."""

from __future__ import annotations

import pytest

from functions.core.llm.errors import LLMError, LLMTimeoutError, LLMUnavailableError
from functions.core.llm.schemas import ChatDone
from tests.core.llm.conftest import Faults, MakeClient, chat_request, read_stream, sim_stats
from tests.core.llm.scripted_server import BlackHole, ScriptedServer, closed_port_url
from tests.support.simulator import SimulatorProcess

CHAT = "/v1/chat/completions"


async def chat_count(sim: SimulatorProcess) -> int:
    count: int = (await sim_stats(sim))["paths"].get(CHAT, 0)
    return count


async def test_refused_connection_is_retried_on_another_upstream(
    make_client: MakeClient, fresh: SimulatorProcess
) -> None:
    client = make_client(closed_port_url(), fresh.base_url, llm_eject_after_failures=10)
    for _ in range(4):
        assert (await client.chat(chat_request(model=None))).upstream_url == fresh.base_url
        events = [e async for e in client.stream_chat(chat_request(model=None))]
        assert isinstance(events[-1], ChatDone)
    dead, live = client.stats().upstreams
    assert dead.connect_failures_total >= 1
    assert client.stats().retries_total == dead.connect_failures_total
    assert live.requests_total == 8
    assert await chat_count(fresh) == 8


async def test_connect_timeout_is_retried(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    hole = BlackHole()
    try:
        client = make_client(hole.base_url, fresh.base_url, llm_connect_timeout_s=0.2)
        for _ in range(3):
            assert (await client.chat(chat_request(model=None))).upstream_url == fresh.base_url
    finally:
        hole.close()
    assert client.stats().upstreams[0].connect_failures_total >= 1


async def test_503_before_the_body_is_retried(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "503"}, times=2)
    client = make_client(fresh.base_url)
    result = await client.chat(chat_request())
    assert result.content
    stats = await sim_stats(fresh)
    assert stats["faults"] == {"503": 2}
    assert stats["paths"][CHAT] == 3
    assert client.stats().retries_total == 2

    faults.add({"X-Sim-Fault": "503"}, times=1)
    events = [e async for e in client.stream_chat(chat_request())]
    assert isinstance(events[-1], ChatDone)


async def test_retries_are_bounded(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "503"})
    with pytest.raises(LLMUnavailableError):
        await make_client(fresh.base_url, llm_max_retries=2).chat(chat_request())
    assert await chat_count(fresh) == 3
    with pytest.raises(LLMUnavailableError):
        await make_client(fresh.base_url, llm_max_retries=0).chat(chat_request())
    assert await chat_count(fresh) == 4


@pytest.mark.parametrize("fault", ["500", "empty500"])
async def test_500_is_not_retried(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults, fault: str
) -> None:
    faults.add({"X-Sim-Fault": fault}, times=1)
    client = make_client(fresh.base_url)
    with pytest.raises(LLMError):
        await client.chat(chat_request())
    assert await chat_count(fresh) == 1
    assert client.stats().retries_total == 0


@pytest.mark.parametrize("fault", ["cut:2", "drop:2"])
async def test_a_stream_broken_after_output_began_is_not_retried(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults, fault: str
) -> None:
    # cut: an error event mid-stream; drop: the connection closed mid-stream.
    faults.add({"X-Sim-Fault": fault}, times=1)
    client = make_client(fresh.base_url)
    with pytest.raises(LLMError) as info:
        await read_stream(client.stream_chat(chat_request()), [])
    assert info.value.partial_text
    assert await chat_count(fresh) == 1
    assert client.stats().retries_total == 0


async def test_a_hang_up_after_sending_is_not_retried(make_client: MakeClient) -> None:
    async with ScriptedServer(None) as server:
        client = make_client(server.base_url, llm_max_retries=2)
        with pytest.raises(LLMError) as info:
            await client.chat(chat_request(model=None))
    assert type(info.value) is LLMError
    assert len(server.requests) == 1


async def test_a_first_token_timeout_is_not_retried(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "hang"})
    client = make_client(fresh.base_url, llm_first_token_timeout_s=0.2)
    with pytest.raises(LLMTimeoutError):
        await anext(client.stream_chat(chat_request()))
    assert await chat_count(fresh) == 1
