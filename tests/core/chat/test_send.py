"""ChatService.send and .stream as every door describes a send: ``SendRequest`` variants.

Each test checks what the caller got, what the model was asked (the simulator keeps the
last chat request it received) and what the database holds.
"""

from __future__ import annotations

from typing import Any

import msgspec

from functions.core.chat.schemas import (
    MessageStarted,
    ReplyDelta,
    ReplyDone,
    SendRequest,
)
from functions.core.chat.service import ChatService
from functions.core.chat.targets import Target
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigSpec
from functions.core.conversations import service as conversations
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.messages.schemas import ConfigRef, MessageOut, Turn
from tests.core.chat.conftest import (
    MODEL,
    MakeClient,
    message_row,
    new_key,
    new_party,
    stored,
    stored_of,
)
from tests.support.simulator import SimulatorProcess


async def last_body(sim: SimulatorProcess) -> dict[str, Any]:
    """The JSON body of the last chat request the simulator received."""
    request = (await sim.stats_async())["last_chat_request"]
    assert request is not None
    body: dict[str, Any] = request["body"]
    return body


def summary(rows: list[MessageOut]) -> list[tuple[int, str, str, str]]:
    return [(m.seq, m.role, m.status, m.content) for m in rows]


async def test_a_send_stores_both_turns_and_sends_the_history(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    party = await new_party(system_prompt="Be terse.", temperature=0.3)
    chat = ChatService(make_client(sim.base_url))
    first = await chat.send(party.says("Hello, 세계 🌍"))
    second = await chat.send(party.says("And again?", sampling={"temperature": 0.9}))

    assert (first.status, first.seq, second.status, second.seq) == ("complete", 2, "complete", 4)
    assert first.content
    assert first.config == ConfigRef(id=party.config.id, name=party.config.name, version=1)
    assert first.usage is not None
    assert first.finish_reason == "stop"  # the simulator's whole 8-token reply
    body = await last_body(sim)
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello, 세계 🌍"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "And again?"},
    ]
    assert (body["model"], body["temperature"]) == (MODEL, 0.9)
    assert summary(await stored_of(party)) == [
        (1, "user", "complete", "Hello, 세계 🌍"),
        (2, "assistant", "complete", first.content),
        (3, "user", "complete", "And again?"),
        (4, "assistant", "complete", second.content),
    ]
    assert (await stored_of(party))[3] == second


async def test_a_stream_yields_message_deltas_and_the_stored_reply(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    party = await new_party()
    chat = ChatService(make_client(sim.base_url))
    events = [event async for event in chat.stream(party.says("Stream it"))]

    started, *deltas, done = events
    assert isinstance(started, MessageStarted)
    assert started.user_message.content == "Stream it"
    assert started.assistant_message.status == "pending"
    assert deltas
    assert all(isinstance(event, ReplyDelta) for event in deltas)
    assert isinstance(done, ReplyDone)
    text = "".join(event.text for event in deltas if isinstance(event, ReplyDelta))
    assert (done.message.status, done.message.content) == ("complete", text)
    assert done.message.id == started.assistant_message.id
    assert done.message.ttft_ms is not None
    rows = await stored_of(party)
    assert (rows[0].id, rows[1]) == (started.user_message.id, done.message)
    assert summary(rows) == [
        (1, "user", "complete", "Stream it"),
        (2, "assistant", "complete", text),
    ]


async def test_no_conversation_id_starts_a_conversation(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    party = await new_party()
    chat = ChatService(make_client(sim.base_url))
    request = SendRequest(
        access=UNRESTRICTED,
        owner=party.owner,
        turns=[Turn(role="user", content="A new topic")],
        title="Quarterly plan",
        target=Target(config=party.config.name),
    )
    reply = await chat.send(request)

    assert reply.conversation_id != party.conversation_id
    conversation = await conversations.get_conversation(party.owner, reply.conversation_id)
    assert (conversation.title, conversation.config) == ("Quarterly plan", party.config.name)
    assert conversation.message_count == 2
    assert summary(await stored(party.owner, reply.conversation_id)) == [
        (1, "user", "complete", "A new topic"),
        (2, "assistant", "complete", reply.content),
    ]
    assert await stored_of(party) == []  # the party's own conversation is untouched

    streamed = [event async for event in chat.stream(msgspec.structs.replace(request, title="B"))]
    assert isinstance(streamed[0], MessageStarted)
    other = streamed[0].user_message.conversation_id
    assert other not in (reply.conversation_id, party.conversation_id)
    assert (await conversations.get_conversation(party.owner, other)).title == "B"


TOOL_CALL = {
    "id": "call_7",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}
PARTS: list[dict[str, Any]] = [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]
EXACT_TURNS = [
    Turn(role="system", content="You call tools."),
    Turn(role="user", content="What is in this picture?", parts=PARTS),
    Turn(role="assistant", tool_calls=[TOOL_CALL]),
    Turn(role="tool", content='{"celsius": 4}', tool_call_id="call_7", name="get_weather"),
]


async def test_exact_prompt_sends_exactly_the_turns_and_stores_them_all(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    # A system prompt and an earlier exchange that "exact" must both leave out.
    party = await new_party(system_prompt="Configured system prompt", extra={"top_k": 5})
    chat = ChatService(make_client(sim.base_url))
    earlier = await chat.send(party.says("earlier"))
    reply = await chat.send(
        SendRequest(
            access=UNRESTRICTED,
            owner=party.owner,
            conversation_id=party.conversation_id,
            turns=EXACT_TURNS,
            prompt="exact",
            sampling={"seed": 11},
            extra={"min_p": 0.1},
        )
    )

    body = await last_body(sim)
    assert body["messages"] == [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "content": PARTS},
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
        {
            "role": "tool",
            "content": '{"celsius": 4}',
            "name": "get_weather",
            "tool_call_id": "call_7",
        },
    ]
    assert (body["seed"], body["top_k"], body["min_p"]) == (11, 5, 0.1)
    rows = await stored_of(party)
    assert summary(rows) == [
        (1, "user", "complete", "earlier"),
        (2, "assistant", "complete", earlier.content),
        (3, "system", "complete", "You call tools."),
        (4, "user", "complete", "What is in this picture?"),
        (5, "assistant", "complete", ""),
        (6, "tool", "complete", '{"celsius": 4}'),
        (7, "assistant", "complete", reply.content),
    ]
    assert rows[3].content_parts == PARTS
    assert (rows[4].tool_calls, rows[4].content_parts) == ([TOOL_CALL], None)
    assert (rows[5].tool_call_id, rows[5].name) == ("call_7", "get_weather")
    assert rows[6] == reply


async def test_a_bare_model_target_stores_no_configuration(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    owner = await new_key()
    chat = ChatService(make_client(sim.base_url))
    reply = await chat.send(
        SendRequest(
            access=UNRESTRICTED,
            owner=owner,
            turns=[Turn(role="user", content="Hi model")],
            prompt="exact",
            target=Target(model=MODEL),
        )
    )

    assert (reply.status, reply.config, reply.model) == ("complete", None, MODEL)
    row = await message_row(reply.id)
    assert (row["llm_config"], row["model"], row["status"]) == (None, MODEL, "complete")
    conversation = await conversations.get_conversation(owner, reply.conversation_id)
    assert conversation.config is None  # no default configuration exists
    body = await last_body(sim)
    assert body["messages"] == [{"role": "user", "content": "Hi model"}]
    assert body["model"] == MODEL


async def test_a_pinned_version_answers_after_the_configuration_changed(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    party = await new_party(system_prompt="version one")
    await configs.update_config(
        party.config.name, LLMConfigSpec(model=MODEL, system_prompt="version two")
    )
    chat = ChatService(make_client(sim.base_url))
    pinned = await chat.send(party.says("pinned", target=Target(version=1)))
    assert (await last_body(sim))["messages"][0] == {"role": "system", "content": "version one"}
    latest = await chat.send(party.says("latest"))
    assert (await last_body(sim))["messages"][0] == {"role": "system", "content": "version two"}

    assert pinned.config is not None
    assert latest.config is not None
    assert (pinned.config.version, latest.config.version) == (1, 2)
    row = await message_row(pinned.id)
    assert str(row["llm_config"]) == str(party.config.id)
