"""Every failure in the vLLM contract surfaces as its own typed error."""

from __future__ import annotations

import asyncio

import pytest

from functions.core.errors import SwitchboardError
from functions.core.llm.errors import (
    ContextLengthExceededError,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMOverloadedError,
    LLMUnavailableError,
    ModelNotFoundError,
    ModelNotServedError,
)
from functions.simulator.text import tokenize
from tests.core.llm.conftest import (
    MAX_MODEL_LEN,
    MODEL,
    Faults,
    MakeClient,
    chat_request,
    read_stream,
    sim_stats,
    wait_for_stats,
)
from tests.core.llm.scripted_server import ScriptedServer, closed_port_url, http_response
from tests.support.simulator import SimulatorProcess, async_running_simulator


def assert_error(exc: SwitchboardError, code: str, status: int) -> None:
    assert (exc.code, exc.status_code) == (code, status)


async def test_unreachable_upstream(make_client: MakeClient) -> None:
    client = make_client(closed_port_url())
    for call in (
        client.chat(chat_request(model=None)),
        anext(client.stream_chat(chat_request(model=None))),
    ):
        with pytest.raises(LLMUnavailableError) as info:
            await call
        assert_error(info.value, "llm_unavailable", 503)
    assert client.stats().in_flight == 0


async def test_model_no_upstream_serves(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    with pytest.raises(ModelNotServedError) as info:
        await client.chat(chat_request(model="no-such-model"))
    assert_error(info.value, "model_not_served", 404)
    assert isinstance(info.value, ModelNotFoundError)
    assert info.value.details["known_models"] == [MODEL]
    assert (await sim_stats(fresh))["paths"].get("/v1/chat/completions") is None


async def test_vllm_404_for_a_model_it_no_longer_serves(make_client: MakeClient) -> None:
    async with async_running_simulator("--model", "old-model") as old:
        client = make_client(old.base_url)
        await client.chat(chat_request(model="old-model"))  # learns the model list
    # The server is replaced on the same port by one that serves another model.
    async with async_running_simulator("--model", "new-model", port=old.port):
        with pytest.raises(ModelNotFoundError) as info:
            await client.chat(chat_request(model="old-model"))
        assert_error(info.value, "model_not_found", 404)
        assert info.value.details["upstream_status"] == 404
        assert "old-model" in str(info.value)
        # The 404 made the client refetch the list: now it knows the model is gone.
        with pytest.raises(ModelNotServedError):
            await client.chat(chat_request(model="old-model"))
        assert (await client.chat(chat_request(model="new-model"))).model == "new-model"


async def test_context_length_exceeded(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    with pytest.raises(ContextLengthExceededError) as info:
        await client.chat(chat_request(max_tokens=MAX_MODEL_LEN - 2))
    assert_error(info.value, "context_length_exceeded", 400)
    details = info.value.details
    assert details["max_context_length"] == MAX_MODEL_LEN
    assert details["requested_output_tokens"] == MAX_MODEL_LEN - 2
    assert details["total_tokens"] == details["prompt_tokens"] + MAX_MODEL_LEN - 2

    with pytest.raises(ContextLengthExceededError) as info:
        await client.chat(chat_request(max_completion_tokens=MAX_MODEL_LEN + 1))
    assert info.value.details["requested_output_tokens"] == MAX_MODEL_LEN + 1

    with pytest.raises(ContextLengthExceededError) as info:
        await anext(client.stream_chat(chat_request("word " * MAX_MODEL_LEN)))
    assert info.value.details["prompt_tokens"] >= MAX_MODEL_LEN


async def test_other_bad_requests(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    with pytest.raises(LLMBadRequestError) as info:
        await client.chat(chat_request(temperature=-1.0))
    assert_error(info.value, "llm_bad_request", 400)
    assert info.value.details["param"] == "temperature"
    assert "temperature" in str(info.value)
    assert not isinstance(info.value, ContextLengthExceededError)


async def test_api_key(make_client: MakeClient) -> None:
    async with async_running_simulator("--api-key", "sekret-key-1") as sim:
        anonymous = make_client(sim.base_url)
        with pytest.raises(LLMAuthError) as info:
            await anonymous.chat(chat_request(model=None))
        assert_error(info.value, "llm_auth_failed", 502)
        with pytest.raises(LLMAuthError):
            await anonymous.list_models()

        wrong = make_client(sim.base_url, llm_api_key="wrong-key-2")
        with pytest.raises(LLMAuthError) as info:
            await wrong.chat(chat_request(model=None))
        assert "wrong-key-2" not in f"{info.value} {info.value.details}"

        keyed = make_client(sim.base_url, llm_api_key="sekret-key-1")
        assert (await keyed.chat(chat_request())).content
        sent = (await sim_stats(sim))["last_chat_request"]["headers"]
        assert sent["authorization"] == "Bearer [redacted]"  # the simulator never shows it
        assert [m.id for m in await keyed.list_models()] == [MODEL]


@pytest.mark.parametrize(
    ("fault", "needle"), [("500", "EngineCore encountered an issue"), ("empty500", "empty 500")]
)
async def test_server_errors(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults, fault: str, needle: str
) -> None:
    faults.add({"X-Sim-Fault": fault})
    client = make_client(fresh.base_url)
    for call in (client.chat(chat_request()), anext(client.stream_chat(chat_request()))):
        with pytest.raises(LLMError) as info:
            await call
        assert type(info.value) is LLMError
        assert_error(info.value, "llm_error", 502)
        assert needle in str(info.value)
        assert info.value.details["upstream_status"] == 500


async def test_dead_engine(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    fresh.set_healthy(False)
    with pytest.raises(LLMError) as info:
        await make_client(fresh.base_url).chat(chat_request())
    assert_error(info.value, "llm_error", 502)


async def test_scaling_503_once_retries_are_spent(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "503"})
    with pytest.raises(LLMUnavailableError) as info:
        await make_client(fresh.base_url, llm_max_retries=1).chat(chat_request())
    assert_error(info.value, "llm_unavailable", 503)
    assert "currently scaling" in str(info.value)


async def test_error_event_mid_stream_keeps_the_partial_text(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "cut:3"})
    client = make_client(fresh.base_url)
    received: list[str] = []
    with pytest.raises(LLMError) as info:
        await read_stream(client.stream_chat(chat_request()), received)
    assert type(info.value) is LLMError
    assert_error(info.value, "llm_error", 502)
    # Three tokens before the cut, in one delta or several (what arrived together).
    assert len(tokenize("".join(received))) == 3
    assert info.value.partial_text == "".join(received)
    assert info.value.details["upstream_code"] == 500
    assert client.stats().in_flight == 0


async def test_legacy_error_shapes(make_client: MakeClient) -> None:
    async with async_running_simulator(
        "--legacy-errors", "--max-model-len", "64", "--tokens", "6"
    ) as sim:
        client = make_client(sim.base_url)
        with pytest.raises(LLMBadRequestError) as bad:
            await client.chat(chat_request(top_p=5.0))
        assert "top_p" in str(bad.value)
        with pytest.raises(ContextLengthExceededError) as long:
            await client.chat(chat_request(max_tokens=60))
        assert long.value.details["max_context_length"] == 64
        with pytest.raises(ModelNotServedError):
            await client.chat(chat_request(model="nope"))


async def test_legacy_mid_stream_error(make_client: MakeClient, faults: Faults) -> None:
    async with async_running_simulator("--legacy-errors", "--tokens", "6") as sim:
        faults.add({"X-Sim-Fault": "cut:2"})
        with pytest.raises(LLMError) as info:
            await read_stream(make_client(sim.base_url).stream_chat(chat_request()), [])
        assert info.value.partial_text
        assert info.value.details["upstream_code"] == 400  # old vLLM called every error a 400


async def test_wrong_base_url_is_named(make_client: MakeClient) -> None:
    async with ScriptedServer(http_response(404, b'{"detail":"Not Found"}')) as server:
        with pytest.raises(LLMError) as info:
            await make_client(server.base_url).chat(chat_request(model=None))
    assert not isinstance(info.value, ModelNotFoundError)
    assert "SWITCHBOARD_LLM_URLS" in str(info.value)


async def test_every_upstream_at_its_cap(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "hang"})
    client = make_client(fresh.base_url, llm_max_inflight_per_upstream=1)
    hanging = asyncio.create_task(client.chat(chat_request()))
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 1)
    with pytest.raises(LLMOverloadedError) as info:
        await client.chat(chat_request())
    assert_error(info.value, "llm_overloaded", 503)
    assert info.value.details["in_flight"] == {f"127.0.0.1:{fresh.port}": 1}
    assert client.stats().overloaded_total == 1
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    assert client.stats().in_flight == 0
