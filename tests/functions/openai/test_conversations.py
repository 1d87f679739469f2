"""OpenAI's Conversations API (``/openai/v1/conversations``) with the official SDK over a
real socket, on PostgreSQL and SQLite: CRUD, items paging both ways, the same rows read
and written through the chat API and the door's chat completions, appends under the
conversation's lock, and another key's ids answered as missing ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import openai
import pytest
from openai import AsyncOpenAI

from functions.core.db.sql import fetch
from tests.functions.openai.conftest import Door, secret_of
from tests.support.timing import scaled


@dataclass
class Conversations:
    """SDK clients whose base URL is the door's own, ``/openai/v1``."""

    door: Door
    alice: AsyncOpenAI
    bob: AsyncOpenAI


@pytest.fixture
async def conv(door: Door) -> AsyncIterator[Conversations]:
    base_url = door.base_url.removesuffix("/v1") + "/openai/v1"
    clients = {
        name: AsyncOpenAI(
            base_url=base_url,
            api_key=secret_of(getattr(door.api, name)),
            max_retries=0,
            timeout=scaled(15.0),
        )
        for name in ("alice", "bob")
    }
    try:
        yield Conversations(door=door, **clients)
    finally:
        for client in clients.values():
            await client.close()


def row_id(openai_id: str) -> str:
    """The UUID an OpenAI-shaped id names (``conv_<hex>``, ``msg_<hex>``)."""
    return str(UUID(hex=openai_id.partition("_")[2]))


def texts(items: list[Any]) -> list[tuple[str, str]]:
    return [(item.role, item.content[0].text) for item in items]


ITEMS: list[Any] = [
    {"type": "message", "role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hi! How can I help?"}],
    },
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Plan my "},
            {"type": "input_text", "text": "week"},
        ],
    },
]


async def test_create_retrieve_update_delete(conv: Conversations) -> None:
    created = await conv.alice.conversations.create(items=ITEMS, metadata={"topic": "plans"})
    assert created.object == "conversation"
    assert created.id.startswith("conv_")
    assert created.metadata == {"topic": "plans"}
    assert isinstance(created.created_at, int)

    again = await conv.alice.conversations.retrieve(created.id)
    assert again.model_dump() == created.model_dump()

    updated = await conv.alice.conversations.update(created.id, metadata={"topic": "work"})
    assert updated.metadata == {"topic": "work"}
    assert (await conv.alice.conversations.retrieve(created.id)).metadata == {"topic": "work"}

    # OpenAI's limits on metadata: 16 pairs, 64-character keys, 512-character values.
    for metadata in (
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await conv.alice.conversations.update(created.id, metadata=metadata)
        assert refused.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as too_many:
        await conv.alice.conversations.create(items=[{"role": "user", "content": "x"}] * 21)
    assert too_many.value.param == "items"

    deleted = await conv.alice.conversations.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        created.id,
        "conversation.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError):
        await conv.alice.conversations.retrieve(created.id)
    gone = await conv.door.api.alice.get(f"/v1/conversations/{row_id(created.id)}")
    assert gone.status_code == 404


async def test_items_are_the_stored_messages_paged_both_ways(conv: Conversations) -> None:
    created = await conv.alice.conversations.create(items=ITEMS)
    # Stored as ordinary messages of the key, in order, readable through the chat API.
    stored = await conv.door.messages(row_id(created.id))
    assert [(m["role"], m["content"]) for m in stored] == [
        ("system", "Be brief."),
        ("user", "Hello there"),
        ("assistant", "Hi! How can I help?"),
        ("user", "Plan my week"),
    ]

    newest_first = await conv.alice.conversations.items.list(created.id)
    assert [item.id for item in newest_first.data] == [
        f"msg_{UUID(m['id']).hex}" for m in reversed(stored)
    ]
    assert newest_first.data[0].content[0].type == "input_text"
    assert newest_first.data[1].content[0].type == "output_text"
    assert newest_first.has_more is False
    assert newest_first.first_id == newest_first.data[0].id
    assert newest_first.last_id == newest_first.data[-1].id

    # Pages of two, oldest first: the SDK follows last_id while has_more.
    first = await conv.alice.conversations.items.list(created.id, order="asc", limit=2)
    assert texts(first.data) == [("system", "Be brief."), ("user", "Hello there")]
    assert first.has_more is True
    second = await conv.alice.conversations.items.list(
        created.id, order="asc", limit=2, after=first.last_id
    )
    assert texts(second.data) == [("assistant", "Hi! How can I help?"), ("user", "Plan my week")]
    assert second.has_more is False
    walked = [item.id async for item in conv.alice.conversations.items.list(created.id, limit=1)]
    assert walked == [item.id for item in newest_first.data]
    with_include = await conv.alice.conversations.items.list(
        created.id, include=["message.output_text.logprobs"], limit=100
    )
    assert len(with_include.data) == 4

    item = await conv.alice.conversations.items.retrieve(
        first.data[1].id, conversation_id=created.id
    )
    assert item.model_dump() == first.data[1].model_dump()
    assert (item.type, item.role, item.status) == ("message", "user", "completed")


async def test_a_conversation_written_here_is_continued_by_the_chat_api(
    conv: Conversations,
) -> None:
    await conv.door.api.create_config("default", is_default=True)
    created = await conv.alice.conversations.create(items=[{"role": "user", "content": "Hi"}])
    sent = await conv.door.api.alice.post(
        f"/v1/conversations/{row_id(created.id)}/messages", json={"content": "Tell me more"}
    )
    assert sent.status_code == 201, sent.text
    reply = sent.json()
    items = (await conv.alice.conversations.items.list(created.id, order="asc")).data
    assert [(item.role, item.status) for item in items] == [
        ("user", "completed"),
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    assert items[2].id == f"msg_{UUID(reply['id']).hex}"
    assert items[2].content[0].text == reply["content"]


async def test_a_door_conversation_is_read_and_extended_here(conv: Conversations) -> None:
    history: list[Any] = [{"role": "user", "content": "Hello there"}]
    raw = await conv.door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history
    )
    answer = raw.parse().choices[0].message.content
    conversation = "conv_" + UUID(raw.headers["x-switchboard-conversation"]).hex
    items = (await conv.alice.conversations.items.list(conversation, order="asc")).data
    assert texts(items) == [("user", "Hello there"), ("assistant", answer)]

    # Items appended here are chained onto the thread: resending the history with them
    # (and a new turn) through chat completions appends to the same conversation.
    added = await conv.alice.conversations.items.create(
        conversation,
        items=[
            {"role": "user", "content": "Noted?"},
            {"role": "assistant", "content": "Noted."},
        ],
    )
    assert [item.role for item in added.data] == ["user", "assistant"]
    assert added.first_id == added.data[0].id
    history += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Noted?"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Thanks"},
    ]
    again = await conv.door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history
    )
    assert again.headers["x-switchboard-conversation"] == row_id(conversation)
    stored = await conv.door.messages(row_id(conversation))
    assert [m["seq"] for m in stored] == list(range(1, 7))


async def test_tool_calls_are_function_call_items(conv: Conversations) -> None:
    created = await conv.alice.conversations.create(
        items=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        ]
    )
    items = (await conv.alice.conversations.items.list(created.id, order="asc")).data
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]
    call, output = items[1], items[2]
    assert (call.call_id, call.name, call.arguments) == ("call_1", "weather", '{"city": "Paris"}')
    assert (output.call_id, output.output) == ("call_1", "Sunny")
    stored = await conv.door.messages(row_id(created.id))
    assert stored[1]["tool_calls"][0]["function"]["name"] == "weather"
    assert stored[2]["tool_call_id"] == "call_1"


async def test_deleting_an_item_leaves_the_order(conv: Conversations) -> None:
    created = await conv.alice.conversations.create(items=ITEMS)
    items = (await conv.alice.conversations.items.list(created.id, order="asc")).data
    answered = await conv.alice.conversations.items.delete(items[1].id, conversation_id=created.id)
    assert answered.id == created.id
    assert answered.object == "conversation"
    left = (await conv.alice.conversations.items.list(created.id, order="asc")).data
    assert [item.id for item in left] == [items[0].id, items[2].id, items[3].id]
    with pytest.raises(openai.NotFoundError):
        await conv.alice.conversations.items.retrieve(items[1].id, conversation_id=created.id)
    with pytest.raises(openai.NotFoundError):
        await conv.alice.conversations.items.delete(items[1].id, conversation_id=created.id)
    # Appending after a deletion goes after the last message: seq keeps its gap.
    await conv.alice.conversations.items.create(
        created.id, items=[{"role": "user", "content": "Again"}]
    )
    stored = await conv.door.messages(row_id(created.id))
    assert [m["seq"] for m in stored] == [1, 3, 4, 5]


async def _pending_reply(conversation_id: UUID, *, lease_left: timedelta) -> UUID:
    """A reply being generated, as a claim leaves it: the conversation's last message,
    ``pending``, owned by a process whose lease runs for ``lease_left`` more (a process
    of the test's: a real send's window depends on the machine's load)."""
    now = datetime.now(UTC)
    lease, reply = uuid4(), uuid4()
    await fetch(
        "INSERT INTO process_lease (id, host, pid, started_at, heartbeat_at, expires_at) "
        "VALUES ({}, 'test', 1, {}, {}, {})",
        lease,
        now,
        now,
        now + lease_left,
    )
    bumped = await fetch(
        "UPDATE conversation SET last_seq = last_seq + 1 WHERE id = {} RETURNING last_seq",
        conversation_id,
    )
    await fetch(
        "INSERT INTO message (id, conversation, seq, role, content, status, created_at, "
        "owner_instance, stale_after) VALUES ({}, {}, {}, 'assistant', '', 'pending', {}, {}, {})",
        reply,
        conversation_id,
        bumped[0]["last_seq"],
        now,
        lease,
        now + timedelta(minutes=10),
    )
    return reply


async def test_appending_while_a_reply_is_pending_is_busy(conv: Conversations) -> None:
    created = await conv.alice.conversations.create(items=[{"role": "user", "content": "Hi"}])
    row = UUID(row_id(created.id))
    await _pending_reply(row, lease_left=timedelta(minutes=10))
    with pytest.raises(openai.ConflictError) as busy:
        await conv.alice.conversations.items.create(
            created.id, items=[{"role": "user", "content": "Meanwhile"}]
        )
    assert busy.value.code == "conversation_busy"
    assert busy.value.response.headers.get("retry-after")
    # Nothing was stored, and the pending reply cannot be deleted under its send.
    items = (await conv.alice.conversations.items.list(created.id, order="asc")).data
    assert [(item.role, item.status) for item in items] == [
        ("user", "completed"),
        ("assistant", "in_progress"),
    ]
    with pytest.raises(openai.ConflictError):
        await conv.alice.conversations.items.delete(items[1].id, conversation_id=created.id)

    # A pending reply whose process's lease lapsed is retired, as a send's claim retires
    # it, and the items go after it.
    other = await conv.alice.conversations.create(items=[{"role": "user", "content": "Hi"}])
    await _pending_reply(UUID(row_id(other.id)), lease_left=timedelta(seconds=-1))
    await conv.alice.conversations.items.create(
        other.id, items=[{"role": "user", "content": "Afterwards"}]
    )
    stored = await conv.door.messages(row_id(other.id))
    assert [(m["seq"], m["role"], m["status"]) for m in stored] == [
        (1, "user", "complete"),
        (2, "assistant", "failed"),
        (3, "user", "complete"),
    ]
    assert stored[1]["error"]["code"] == "interrupted"


async def test_another_keys_ids_are_missing_ones(conv: Conversations) -> None:
    created = await conv.alice.conversations.create(items=ITEMS, metadata={"owner": "alice"})
    item = (await conv.alice.conversations.items.list(created.id)).data[0]
    missing = "conv_" + "0" * 32
    for conversation_id in (created.id, missing, "conv_nothex", UUID(row_id(created.id)).hex):
        calls = [
            conv.bob.conversations.retrieve(conversation_id),
            conv.bob.conversations.update(conversation_id, metadata={"owner": "bob"}),
            conv.bob.conversations.items.list(conversation_id),
            conv.bob.conversations.items.create(
                conversation_id, items=[{"role": "user", "content": "mine now"}]
            ),
            conv.bob.conversations.items.retrieve(item.id, conversation_id=conversation_id),
            conv.bob.conversations.items.delete(item.id, conversation_id=conversation_id),
            conv.bob.conversations.delete(conversation_id),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError) as refused:
                await call
            body = refused.value.body
            assert isinstance(body, dict)
            assert body["type"] == "invalid_request_error"
    # An item of alice's under another conversation of alice's is missing there too.
    other = await conv.alice.conversations.create(items=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        await conv.alice.conversations.items.retrieve(item.id, conversation_id=other.id)
    still = await conv.alice.conversations.retrieve(created.id)
    assert still.metadata == {"owner": "alice"}
    assert len((await conv.alice.conversations.items.list(created.id)).data) == 4


async def test_the_whole_door_is_served_under_its_own_base_url(conv: Conversations) -> None:
    completion = await conv.alice.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "Hi"}]
    )
    assert completion.choices[0].message.content
    assert [model.id async for model in conv.alice.models.list()]
    # /v1/conversations stays the chat API's.
    listed = await conv.door.api.alice.get("/v1/conversations")
    assert listed.status_code == 200
    assert "next_cursor" in listed.json()


async def test_a_history_resent_past_a_deleted_item_branches(conv: Conversations) -> None:
    history: list[Any] = [{"role": "user", "content": "Hello there"}]
    first = await conv.door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history
    )
    conversation = first.headers["x-switchboard-conversation"]
    history += [
        {"role": "assistant", "content": first.parse().choices[0].message.content},
        {"role": "user", "content": "Go on"},
    ]
    second = await conv.door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history
    )
    assert second.headers["x-switchboard-conversation"] == conversation
    history += [
        {"role": "assistant", "content": second.parse().choices[0].message.content},
        {"role": "user", "content": "And then?"},
    ]
    stored = await conv.door.messages(conversation)
    asked = f"msg_{UUID(stored[2]['id']).hex}"
    await conv.alice.conversations.items.delete(
        asked, conversation_id=f"conv_{UUID(conversation).hex}"
    )

    # The conversation no longer holds what the client resends: a branch from the last
    # message both still share, never an append.
    third = await conv.door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=history
    )
    branch = third.headers["x-switchboard-conversation"]
    assert branch != conversation
    forked = (await conv.door.api.alice.get(f"/v1/conversations/{branch}")).json()
    assert forked["forked_from_message_id"] == stored[1]["id"]
    assert len(await conv.door.messages(branch)) == len(history) + 1
    assert [m["seq"] for m in await conv.door.messages(conversation)] == [1, 2, 4]
