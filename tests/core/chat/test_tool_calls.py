"""Tool calls are recorded losslessly: stored with the reply (streamed and not, on both
engines), sent back upstream exactly with the ``tool`` turn that answers them, and read
back through the chat API and an export; a reply cut short keeps the part of its call
that arrived.

The upstream is the simulator, which calls the first offered tool when a configuration
offers tools (``extra``) and the last turn is the user's, in vLLM's wire shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.chat.schemas import ReplyDone, ReplyFailed, SendRequest
from functions.core.chat.service import ChatService
from functions.core.exports.schemas import ExportRequest
from functions.core.exports.service import export_history
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMError
from functions.core.messages.schemas import Turn
from tests.core.chat.conftest import MakeClient, new_party, stored_of
from tests.core.exports.conftest import data_files, read_rows, writers_ended
from tests.core.llm.conftest import Faults
from tests.support.databases import sqlite_url
from tests.support.inprocess import InProcessGateway, inprocess_gateway, inprocess_settings
from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "tools-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOLS = {"tools": [WEATHER], "tool_choice": "auto"}
ASK = "What is the weather in Seoul? 날씨 ☀️"
ANSWER = "Sunny, 21°C · 맑음"


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", MODEL, "--tokens", "6") as process:
        yield process


@pytest.fixture
async def gateway(
    shared_db: Engine[Any], pg_url: str, sqlite_dir: Path, upstream: SimulatorProcess
) -> AsyncIterator[InProcessGateway]:
    url = pg_url if isinstance(shared_db, PostgresEngine) else sqlite_url(sqlite_dir)
    settings = inprocess_settings(url, [upstream.base_url])
    async with LLMClient.from_settings(settings) as llm, inprocess_gateway(settings, llm=llm) as gw:
        yield gw


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], msgspec.json.decode(lines["data"])))
    return events


async def answer_tool(chat: ChatService, request: SendRequest, *, stream: bool) -> dict[str, Any]:
    """Send ``request`` as a door would; the stored reply, as JSON."""
    if not stream:
        return msgspec.to_builtins(await chat.send(request))  # type: ignore[no-any-return]
    events = [event async for event in chat.stream(request)]
    assert isinstance(events[-1], ReplyDone), events[-1]
    return msgspec.to_builtins(events[-1].message)  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True], ids=["collected", "streamed"])
async def test_a_tool_call_round_trip_is_stored_sent_back_and_read_back(
    gateway: InProcessGateway, upstream: SimulatorProcess, tmp_path: Path, stream: bool
) -> None:
    created = await gateway.admin.post(
        "/v1/configs",
        json={"name": "weather", "model": MODEL, "extra": TOOLS, "is_default": True},
    )
    assert created.status_code == 201, created.text
    alice = await gateway.caller("alice")
    conversation = (await alice.http.post("/v1/conversations", json={})).json()
    path = f"/v1/conversations/{conversation['id']}/messages"

    response = await alice.http.post(path, json={"content": ASK, "stream": stream})
    assert response.status_code in (200, 201), response.text
    if stream:
        name, reply = sse_events(response.text)[-1]
        assert name == "done", reply
        reply = reply["message"]
    else:
        reply = response.json()
    assert (reply["status"], reply["finish_reason"], reply["content"]) == (
        "complete",
        "tool_calls",
        "",
    )
    [call] = reply["tool_calls"]
    assert call["id"].startswith("chatcmpl-tool-")
    assert (call["type"], call["function"]["name"]) == ("function", "get_weather")
    assert json.loads(call["function"]["arguments"]) == {"city": ASK}

    # The tool's answer, as a door that speaks OpenAI's turns sends it.
    chat = gateway.runtime.chat
    tool_turn = Turn(role="tool", content=ANSWER, tool_call_id=call["id"])
    request = SendRequest(
        access=UNRESTRICTED,
        owner=alice.key_id,
        conversation_id=conversation["id"],
        turns=[tool_turn],
    )
    final = await answer_tool(chat, request, stream=stream)
    assert (final["status"], final["tool_calls"]) == ("complete", None)
    assert final["content"]

    sent = (await upstream.stats_async())["last_chat_request"]["body"]
    assert sent["messages"] == [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": ANSWER, "tool_call_id": call["id"]},
    ]

    listed = (await alice.http.get(path)).json()["data"]
    assert [(m["role"], m["tool_calls"], m["tool_call_id"]) for m in listed] == [
        ("user", None, None),
        ("assistant", [call], None),
        ("tool", None, call["id"]),
        ("assistant", None, None),
    ]
    assert listed[1] == reply

    await writers_ended()
    export = await export_history(ExportRequest(destination=str(tmp_path), format="jsonl"))
    assert export.manifest.messages == 4
    (data,) = data_files(tmp_path)
    rows = {row["seq"]: row for row in read_rows(data, "json")}
    assert (rows[2]["tool_calls"], rows[2]["finish_reason"]) == ([call], "tool_calls")
    assert (rows[3]["role"], rows[3]["tool_call_id"], rows[3]["content"]) == (
        "tool",
        call["id"],
        ANSWER,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["collected", "streamed"])
async def test_a_cut_reply_keeps_the_part_of_its_tool_call_that_arrived(
    db: object, sim: SimulatorProcess, make_client: MakeClient, faults: Faults, stream: bool
) -> None:
    party = await new_party(extra=TOOLS)
    chat = ChatService(make_client(sim.base_url))
    whole = await chat.send(party.says(ASK))
    [call] = whole.tool_calls or []
    arguments = call["function"]["arguments"]

    faults.add({"X-Sim-Fault": "cut:4"}, times=1)
    # A client of its own: the cut must strike this request, not a reused connection.
    chat = ChatService(make_client(sim.base_url))
    if stream:
        events = [event async for event in chat.stream(party.says(ASK))]
        assert isinstance(events[-1], ReplyFailed)
    else:
        with pytest.raises(LLMError):
            await chat.send(party.says(ASK))

    cut = (await stored_of(party))[-1]
    assert (cut.status, cut.content) == ("failed", "")
    [partial] = cut.tool_calls or []
    assert partial["id"].startswith("chatcmpl-tool-")  # each call its own id
    assert (partial["type"], partial["function"]["name"]) == ("function", "get_weather")
    received = partial["function"]["arguments"]
    # What arrived before the cut: a strict, non-empty beginning of the whole arguments.
    assert received
    assert received != arguments
    assert arguments.startswith(received)
