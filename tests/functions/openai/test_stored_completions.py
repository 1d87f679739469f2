"""Stored chat completions with the official SDK over a real socket, on PostgreSQL and
SQLite: ``store: true`` lists a completion by the id it was answered with (streamed or
not), filtered by model and metadata, paged both ways; its messages are the history it
was asked with; metadata is updated, a deletion unlists it; another key's ids are
missing ones."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import openai
import pytest

from tests.functions.openai.conftest import Door

HELLO = [{"role": "user", "content": "Hello there"}]


def reply_hex(headers: Any) -> str:
    return UUID(headers["x-switchboard-reply-id"]).hex


async def test_a_stored_completion_is_retrieved_by_the_id_it_was_answered_with(
    door: Door,
) -> None:
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO, store=True, metadata={"topic": "greeting"}
    )
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{reply_hex(raw.headers)}"
    found = await door.alice.chat.completions.retrieve(completion.id)
    assert found.id == completion.id
    assert found.choices[0].message.content == completion.choices[0].message.content
    assert found.choices[0].finish_reason == completion.choices[0].finish_reason
    assert found.usage == completion.usage
    assert found.model == completion.model
    assert found.metadata == {"topic": "greeting"}
    # vLLM is not sent the gateway's fields.
    sent = await door.last_request()
    assert "store" not in sent
    assert "metadata" not in sent

    # Streamed: every chunk carries the stored reply's id.
    stream = await door.alice.chat.completions.create(
        model="sim-model", messages=HELLO, stream=True, store=True
    )
    chunks = [chunk async for chunk in stream]
    streamed_id = f"chatcmpl-{reply_hex(stream.response.headers)}"
    assert {chunk.id for chunk in chunks} == {streamed_id}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    again = await door.alice.chat.completions.retrieve(streamed_id)
    assert again.choices[0].message.content == text

    # Not stored: answered under its reply's id all the same, but not listed.
    unstored = await door.alice.chat.completions.create(model="sim-model", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        await door.alice.chat.completions.retrieve(unstored.id)
    listed = [c.id async for c in door.alice.chat.completions.list()]
    assert listed == [completion.id, streamed_id]


async def test_listing_filters_and_pages(door: Door) -> None:
    ids = []
    for index in range(4):
        completion = await door.alice.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": f"Question {index}"}],
            store=True,
            metadata={"parity": "even" if index % 2 == 0 else "odd", "n": str(index)},
        )
        ids.append(completion.id)
    page = await door.alice.chat.completions.list(limit=3)
    assert [c.id for c in page.data] == ids[:3]
    assert page.has_more is True
    rest = await door.alice.chat.completions.list(limit=3, after=page.data[-1].id)
    assert [c.id for c in rest.data] == ids[3:]
    assert rest.has_more is False
    newest = await door.alice.chat.completions.list(order="desc", limit=2)
    assert [c.id for c in newest.data] == [ids[3], ids[2]]
    assert [c.id async for c in door.alice.chat.completions.list(limit=1)] == ids

    even = await door.alice.chat.completions.list(metadata={"parity": "even"})
    assert [c.id for c in even.data] == [ids[0], ids[2]]
    one = await door.alice.chat.completions.list(metadata={"parity": "odd", "n": "3"})
    assert [c.id for c in one.data] == [ids[3]]
    assert (await door.alice.chat.completions.list(metadata={"parity": "none"})).data == []
    served = (await door.alice.chat.completions.retrieve(ids[0])).model
    assert [c.id for c in (await door.alice.chat.completions.list(model=served)).data] == ids
    assert (await door.alice.chat.completions.list(model="another-model")).data == []
    with pytest.raises(openai.BadRequestError) as unknown:
        await door.alice.chat.completions.list(extra_query={"colour": "red"})
    assert unknown.value.param == "colour"


async def test_messages_are_the_history_it_was_asked_with(door: Door) -> None:
    history: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    first = await door.alice.chat.completions.create(
        model="sim-model", messages=history, store=True
    )
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
    ]
    second = await door.alice.chat.completions.create(
        model="sim-model", messages=history, store=True
    )
    messages = await door.alice.chat.completions.messages.list(second.id)
    assert [(m.role, m.content) for m in messages.data] == [
        ("system", "Be brief."),
        ("user", "Hello there"),
        ("assistant", first.choices[0].message.content),
        ("user", "And then?"),
    ]
    assert all(m.id.startswith("msg_") for m in messages.data)
    parts = messages.data[3].content_parts
    assert parts is not None
    assert [part.model_dump(exclude_none=True) for part in parts] == [
        {"type": "text", "text": "And then?"}
    ]
    assert messages.has_more is False
    page = await door.alice.chat.completions.messages.list(second.id, limit=3)
    assert page.has_more is True
    tail = await door.alice.chat.completions.messages.list(
        second.id, limit=3, after=page.data[-1].id
    )
    assert [m.content for m in tail.data] == ["And then?"]
    backwards = await door.alice.chat.completions.messages.list(second.id, order="desc")
    assert [m.id for m in backwards.data] == [m.id for m in reversed(messages.data)]
    walked = [m.id async for m in door.alice.chat.completions.messages.list(second.id, limit=1)]
    assert walked == [m.id for m in messages.data]
    only_first = await door.alice.chat.completions.messages.list(first.id)
    assert [m.role for m in only_first.data] == ["system", "user"]


async def test_metadata_is_updated_and_a_deletion_unlists(door: Door) -> None:
    raw = await door.alice.chat.completions.with_raw_response.create(
        model="sim-model", messages=HELLO, store=True, metadata={"a": "1"}
    )
    completion = raw.parse()
    updated = await door.alice.chat.completions.update(completion.id, metadata={"b": "2"})
    assert updated.metadata == {"b": "2"}
    assert [c.id for c in (await door.alice.chat.completions.list(metadata={"b": "2"})).data] == [
        completion.id
    ]
    assert (await door.alice.chat.completions.list(metadata={"a": "1"})).data == []
    with pytest.raises(openai.BadRequestError) as too_many:
        await door.alice.chat.completions.update(
            completion.id, metadata={f"k{i}": "v" for i in range(17)}
        )
    assert too_many.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as not_strings:
        await door.alice.chat.completions.create(
            model="sim-model",
            messages=HELLO,
            store=True,
            metadata={"n": 1},  # type: ignore[dict-item]
        )
    assert not_strings.value.param == "metadata"

    deleted = await door.alice.chat.completions.delete(completion.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        completion.id,
        "chat.completion.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError):
        await door.alice.chat.completions.retrieve(completion.id)
    with pytest.raises(openai.NotFoundError):
        await door.alice.chat.completions.delete(completion.id)
    assert (await door.alice.chat.completions.list()).data == []
    # The exchange stays in its conversation.
    stored = await door.messages(raw.headers["x-switchboard-conversation"])
    assert [m["role"] for m in stored] == ["user", "assistant"]


async def test_another_keys_ids_are_missing_ones(door: Door) -> None:
    completion = await door.alice.chat.completions.create(
        model="sim-model", messages=HELLO, store=True, metadata={"owner": "alice"}
    )
    for completion_id in (completion.id, "chatcmpl-" + "0" * 32, "chatcmpl-nothex"):
        calls = [
            door.bob.chat.completions.retrieve(completion_id),
            door.bob.chat.completions.update(completion_id, metadata={"owner": "bob"}),
            door.bob.chat.completions.messages.list(completion_id),
            door.bob.chat.completions.delete(completion_id),
            door.bob.chat.completions.list(after=completion_id),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError):
                await call
    assert (await door.bob.chat.completions.list()).data == []
    assert (await door.bob.chat.completions.list(metadata={"owner": "alice"})).data == []
    found = await door.alice.chat.completions.retrieve(completion.id)
    assert found.metadata == {"owner": "alice"}
