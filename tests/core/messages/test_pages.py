"""A page of a history costs what it returns: bounded by bytes as well as by count."""

from __future__ import annotations

import tracemalloc
import uuid

import msgspec

from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.tables import Conversation, Message
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.messages import service

LONG = 400_000  # the longest message a chat send may carry


async def long_history(count: int) -> tuple[uuid.UUID, uuid.UUID]:
    owner = (await keys.create_key(ApiKeyCreate(name="reader"))).id
    conversation = await conversations.create_conversation(owner, ConversationCreate())
    for seq in range(1, count + 1):
        await Message(
            conversation=conversation.id, seq=seq, role="user", content=str(seq % 10) * LONG
        ).save()
    await Conversation.update({Conversation.last_seq: count}).where(
        Conversation.id == conversation.id
    )
    return owner, conversation.id


async def test_a_page_of_long_messages_is_bounded_by_bytes(db: object) -> None:
    owner, conversation_id = await long_history(30)
    tracemalloc.start()
    try:
        page = await service.list_messages(owner, conversation_id, limit=500, max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [m.seq for m in page.data] == [1, 2]
    assert page.next_cursor is not None
    # Two messages of 400 kB and their rows, not thirty (12 MB of text).
    assert peak < 6 * 1024 * 1024, peak

    seen = [m.seq for m in page.data]
    while page.next_cursor is not None:
        page = await service.list_messages(
            owner, conversation_id, cursor=page.next_cursor, max_bytes=1 << 20
        )
        seen += [m.seq for m in page.data]
    assert seen == list(range(1, 31))


async def test_one_message_larger_than_a_page_still_comes_alone(db: object) -> None:
    owner, conversation_id = await long_history(3)
    page = await service.list_messages(owner, conversation_id, max_bytes=1024)
    assert [m.seq for m in page.data] == [1]
    assert page.next_cursor is not None


async def test_a_page_is_bounded_by_its_json_not_its_stored_bytes(db: object) -> None:
    """Six messages of 170,000 control characters: 1 MB stored, 6 MB as JSON (each a
    6-byte escape). Each page is what a 1 MiB page may send: one of them."""
    owner = (await keys.create_key(ApiKeyCreate(name="reader"))).id
    conversation = await conversations.create_conversation(owner, ConversationCreate())
    for seq in range(1, 7):
        await Message(
            conversation=conversation.id, seq=seq, role="user", content="\x01" * 170_000
        ).save()
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        page = await service.list_messages(
            owner, conversation.id, limit=500, cursor=cursor, max_bytes=1 << 20
        )
        assert len(msgspec.json.encode(page)) <= 1 << 20
        pages.append([m.seq for m in page.data])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [[1], [2], [3], [4], [5], [6]]
