"""The send path's reading modes: text deltas (chat) and the upstream's own events (a
pass-through door) yield what their door needs and record the same reply, tool calls and
usage included, because the gathering is one step for both."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.schemas import MessageStarted, ReplyDelta, ReplyDone
from functions.core.chat.service import ChatService
from functions.core.llm.schemas import UpstreamEvent
from tests.core.chat.conftest import MakeClient, new_party, stored_of
from tests.core.chat.test_tool_calls import ASK, TOOLS
from tests.support.simulator import SimulatorProcess


def comparable(reply: dict[str, Any]) -> dict[str, Any]:
    """A stored reply without what differs between two sends (ids, times, latencies)."""
    calls = [
        {"type": call["type"], "function": call["function"]}
        for call in reply.get("tool_calls") or []
    ]
    usage = reply["usage"]
    return {
        "status": reply["status"],
        "content": reply["content"],
        "finish_reason": reply["finish_reason"],
        "tool_calls": calls,
        "usage": (usage["prompt_tokens"], usage["completion_tokens"]),
    }


@pytest.mark.parametrize("shared_db", ["postgres"], indirect=True)
@pytest.mark.parametrize("extra", [{}, TOOLS], ids=["text", "tool_call"])
async def test_raw_events_pass_through_and_record_what_text_deltas_record(
    shared_db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient, extra: dict[str, Any]
) -> None:
    chat = ChatService(make_client(sim.base_url))
    # Two conversations asking the same of the same model: the simulator answers alike.
    by_deltas, by_events = await new_party(extra=extra), await new_party(extra=extra)

    streamed = [event async for event in chat.stream(by_deltas.says(ASK))]
    raw = [event async for event in chat.stream_raw(by_events.says(ASK))]

    assert isinstance(streamed[0], MessageStarted)
    assert isinstance(raw[0], MessageStarted)
    assert all(isinstance(event, ReplyDelta) for event in streamed[1:-1])
    passed = raw[1:-1]
    assert passed
    assert all(isinstance(event, UpstreamEvent) for event in passed)
    done_by_deltas, done_by_events = streamed[-1], raw[-1]
    assert isinstance(done_by_deltas, ReplyDone)
    assert isinstance(done_by_events, ReplyDone)

    # The events are the upstream's bytes, and their text is the reply recorded.
    chunks = [json.loads(event.raw) for event in passed if isinstance(event, UpstreamEvent)]
    text = "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )
    assert text == done_by_events.message.content
    # Both modes record the same reply (text, tool calls, finish, usage), as stored.
    stored_by_events = msgspec.to_builtins((await stored_of(by_events))[-1])
    stored_by_deltas = msgspec.to_builtins((await stored_of(by_deltas))[-1])
    assert comparable(stored_by_events) == comparable(stored_by_deltas)
    assert stored_by_events == msgspec.to_builtins(done_by_events.message)
    if extra:
        assert comparable(stored_by_events)["tool_calls"]
        assert stored_by_events["finish_reason"] == "tool_calls"
    else:
        assert stored_by_events["content"]
