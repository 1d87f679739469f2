from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate
from functions.core.conversations import service
from functions.core.conversations.schemas import ConversationCreate, ConversationUpdate
from functions.core.db.tables import Conversation
from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate


async def new_owner() -> uuid.UUID:
    return (await keys.create_key(ApiKeyCreate(name="owner"))).id


async def test_create_uses_the_default_config_when_none_is_named(db: object) -> None:
    owner = await new_owner()
    bare = await service.create_conversation(owner, ConversationCreate(title="before"))
    assert bare.config is None
    await configs.create_config(
        msgspec.convert({"name": "dflt", "model": "m", "is_default": True}, LLMConfigCreate)
    )
    conv = await service.create_conversation(
        owner, ConversationCreate(title="안녕 🎉", metadata={"tags": ["a"]})
    )
    assert conv.config == "dflt"
    assert conv.title == "안녕 🎉"
    assert conv.metadata == {"tags": ["a"]}
    assert conv.message_count == 0


async def test_an_unknown_config_name_is_refused(db: object) -> None:
    with pytest.raises(NotFoundError):
        await service.create_conversation(await new_owner(), ConversationCreate(config="nope"))


async def test_another_keys_conversation_does_not_exist_for_you(db: object) -> None:
    alice, bob = await new_owner(), await new_owner()
    conv = await service.create_conversation(alice, ConversationCreate(title="private"))
    with pytest.raises(NotFoundError):
        await service.get_conversation(bob, conv.id)
    with pytest.raises(NotFoundError):
        await service.update_conversation(bob, conv.id, ConversationUpdate(title="mine"))
    with pytest.raises(NotFoundError):
        await service.delete_conversation(bob, conv.id)
    assert (await service.list_conversations(bob)).data == []
    assert (await service.get_conversation(alice, conv.id)).title == "private"


async def test_listing_is_newest_first_with_cursor_pages(db: object) -> None:
    owner = await new_owner()
    created = [
        await service.create_conversation(owner, ConversationCreate(title=f"c{i}"))
        for i in range(5)
    ]
    # Touching the oldest makes it the most recent.
    await service.update_conversation(owner, created[0].id, ConversationUpdate(title="c0!"))
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list_conversations(owner, limit=2, cursor=cursor)
        seen += [c.title for c in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["c0!", "c4", "c3", "c2", "c1"]


async def test_a_mangled_cursor_is_a_clear_error(db: object) -> None:
    with pytest.raises(InvalidInputError, match="cursor"):
        await service.list_conversations(await new_owner(), cursor="%%%")


async def test_patch_changes_only_given_fields(db: object) -> None:
    owner = await new_owner()
    conv = await service.create_conversation(
        owner, ConversationCreate(title="t", metadata={"k": 1})
    )
    updated = await service.update_conversation(owner, conv.id, ConversationUpdate(title="u"))
    assert (updated.title, updated.metadata) == ("u", {"k": 1})
    updated = await service.update_conversation(
        owner, conv.id, ConversationUpdate(metadata={"k": 2})
    )
    assert (updated.title, updated.metadata) == ("u", {"k": 2})


async def test_oversized_metadata_is_refused(db: object) -> None:
    with pytest.raises(InvalidInputError, match="metadata"):
        await service.create_conversation(
            await new_owner(), ConversationCreate(metadata={"blob": "x" * 20_000})
        )


async def test_delete_removes_the_conversation(db: object) -> None:
    owner = await new_owner()
    conv = await service.create_conversation(owner, ConversationCreate())
    await service.delete_conversation(owner, conv.id)
    with pytest.raises(NotFoundError):
        await service.get_conversation(owner, conv.id)


async def test_pages_split_conversations_touched_at_the_same_instant(db: object) -> None:
    """The cursor compares (updated_at, id) as a row: ties on the time are ordered by id,
    and every conversation is on exactly one page."""
    owner = await new_owner()
    created = [
        await service.create_conversation(owner, ConversationCreate(title=f"t{i}"))
        for i in range(5)
    ]
    instant = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    await Conversation.update({Conversation.updated_at: instant}).where(
        Conversation.owner_key == owner
    )
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await service.list_conversations(owner, limit=2, cursor=cursor)
        seen += [c.id for c in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted((c.id for c in created), reverse=True)
