"""Each timeout phase fires on its own and says which one it was."""

from __future__ import annotations

import time

import pytest

from functions.core.llm.errors import LLMTimeoutError
from functions.core.llm.schemas import ChatDone
from functions.simulator.text import tokenize
from tests.core.llm.conftest import (
    Faults,
    MakeClient,
    chat_request,
    read_stream,
    wait_for_stats,
)
from tests.core.llm.scripted_server import BlackHole
from tests.support.simulator import SimulatorProcess


async def test_connect(make_client: MakeClient) -> None:
    hole = BlackHole()
    try:
        client = make_client(hole.base_url, llm_connect_timeout_s=0.2, llm_max_retries=0)
        started = time.monotonic()
        with pytest.raises(LLMTimeoutError) as info:
            await client.chat(chat_request(model=None))
        assert time.monotonic() - started < 1.0
    finally:
        hole.close()
    assert (info.value.phase, info.value.details["phase"]) == ("connect", "connect")
    assert (info.value.code, info.value.status_code) == ("llm_timeout", 504)


async def test_first_token(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-TTFT-Ms": "3000"})
    client = make_client(fresh.base_url, llm_first_token_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(LLMTimeoutError) as info:
        await anext(client.stream_chat(chat_request()))
    assert time.monotonic() - started < 1.0
    assert info.value.phase == "first_token"
    assert info.value.partial_text == ""
    # Giving up closes the connection, so the upstream stops working on it.
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0 and s["aborted"] == 1)


async def test_between_tokens(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "stall:3"})
    client = make_client(fresh.base_url, llm_token_timeout_s=0.2)
    texts: list[str] = []
    with pytest.raises(LLMTimeoutError) as info:
        await read_stream(client.stream_chat(chat_request()), texts)
    assert info.value.phase == "between_tokens"
    # Three tokens before the stall, in one delta or several (what arrived together).
    assert len(tokenize("".join(texts))) == 3
    assert info.value.partial_text == "".join(texts)
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0)


async def test_a_slow_consumer_is_not_an_upstream_timeout(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-ITL-Ms": "10", "X-Sim-Tokens": "2"})
    client = make_client(fresh.base_url, llm_token_timeout_s=0.1)
    events = []
    async for event in client.stream_chat(chat_request()):
        events.append(event)
        time.sleep(0.15)  # noqa: ASYNC251 - a consumer that blocks longer than the timeout
    assert isinstance(events[-1], ChatDone)


async def test_total_streaming(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "100"})
    client = make_client(fresh.base_url, llm_total_timeout_s=0.4)
    texts: list[str] = []
    with pytest.raises(LLMTimeoutError) as info:
        await read_stream(client.stream_chat(chat_request()), texts)
    assert info.value.phase == "total"
    assert 3 <= len(texts) <= 9
    assert info.value.partial_text == "".join(texts)


async def test_total_non_streaming(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "hang"})
    client = make_client(fresh.base_url, llm_total_timeout_s=0.3)
    with pytest.raises(LLMTimeoutError) as info:
        await client.chat(chat_request())
    assert info.value.phase == "total"
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0 and s["aborted"] == 1)
    assert client.stats().in_flight == 0
