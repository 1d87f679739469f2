"""``chat_raw``: the non-streamed body byte for byte, read with its tool calls."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from functions.core.llm.errors import LLMError, LLMTimeoutError
from functions.core.llm.schemas import RawCompletion, Usage
from tests.core.llm.conftest import Faults, MakeClient, chat_request, sim_stats, wait_for_stats
from tests.core.llm.scripted_server import ScriptedServer, http_response
from tests.support.simulator import SimulatorProcess

TOOL_CALLS = (
    '[{"id": "chatcmpl-tool-1", "type": "function", '
    '"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]'
)
# vLLM's shape (every field present), with spacing, raw UTF-8 and a \u escape that a
# re-encoded body would not keep.
TOOL_ANSWER = (
    '{"id": "chatcmpl-raw2", "object": "chat.completion", "created": 1700000000, '
    '"model": "old", "choices": [{"index": 0, "message": {"role": "assistant", '
    '"content": null, "refusal": null, "tool_calls": ' + TOOL_CALLS + ", "
    '"reasoning": "café \\u00e9"}, "logprobs": null, "finish_reason": "tool_calls"}], '
    '"usage": {"prompt_tokens": 20, "total_tokens": 35, "completion_tokens": 15}}'
).encode()


async def test_the_body_as_sent_and_its_tool_calls(make_client: MakeClient) -> None:
    async with ScriptedServer(http_response(200, TOOL_ANSWER)) as server:
        client = make_client(server.base_url)
        raw = await client.chat_raw(chat_request(model=None), request_id="req-7")
        result = await client.chat(chat_request(model=None))
    assert isinstance(raw, RawCompletion)
    assert raw.body == TOOL_ANSWER
    expected: list[dict[str, Any]] = msgspec.json.decode(TOOL_CALLS)
    assert raw.result.tool_calls == expected
    assert raw.result.content == ""
    assert raw.result.finish_reason == "tool_calls"
    assert raw.result.usage == Usage(prompt_tokens=20, completion_tokens=15, total_tokens=35)
    assert (raw.result.model, raw.result.response_id) == ("old", "chatcmpl-raw2")
    assert (raw.result.request_id, raw.result.upstream_url) == ("req-7", server.base_url)
    # chat() reads the same way.
    assert result.tool_calls == expected
    assert client.stats().in_flight == 0
    sent = msgspec.json.decode(server.requests[0].partition(b"\r\n\r\n")[2])
    assert sent["stream"] is False
    assert "stream_options" not in sent


async def test_the_simulators_answer(make_client: MakeClient, fresh: SimulatorProcess) -> None:
    client = make_client(fresh.base_url)
    raw = await client.chat_raw(chat_request())
    body = msgspec.json.decode(raw.body)
    assert body["object"] == "chat.completion"
    assert body["id"] == raw.result.response_id
    assert body["choices"][0]["message"]["content"] == raw.result.content
    assert raw.result.usage is not None
    assert body["usage"]["completion_tokens"] == raw.result.usage.completion_tokens
    # vLLM sends an empty list when no tool was called; that reads as None.
    assert body["choices"][0]["message"]["tool_calls"] == []
    assert raw.result.tool_calls is None
    assert (await sim_stats(fresh))["last_chat_request"]["body"]["stream"] is False


async def test_an_error_answer_is_raised_not_returned(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    faults.add({"X-Sim-Fault": "500"}, times=1)
    client = make_client(fresh.base_url)
    with pytest.raises(LLMError) as info:
        await client.chat_raw(chat_request())
    assert info.value.details["upstream_status"] == 500
    assert client.stats().in_flight == 0

    faults.add({"X-Sim-Fault": "hang"})
    client = make_client(fresh.base_url, llm_total_timeout_s=0.3)
    with pytest.raises(LLMTimeoutError) as timeout:
        await client.chat_raw(chat_request())
    assert timeout.value.phase == "total"
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 0 and s["aborted"] == 1)
    assert client.stats().in_flight == 0
