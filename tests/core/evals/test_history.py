"""Datasets from seeded history, on both engines: the prompt rule's history, the stored reply
as expected, and the owner, configuration, time and limit filters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.schemas import SendRequest
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.engine import use_engine
from functions.core.db.tables import Conversation, Message
from functions.core.errors import InvalidInputError
from functions.core.evals.datasets import (
    dataset_lines,
    encode_items,
    load_dataset,
    parse_dataset,
    write_dataset,
)
from functions.core.evals.history import dataset_from_history
from functions.core.evals.schemas import DatasetMessage
from functions.core.keys import service as keys
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.llm.errors import LLMError
from functions.core.messages.schemas import Turn
from tests.core.evals.conftest import BodyFaults, MakeChat, make_config
from tests.support.simulator import SimulatorProcess


async def new_conversation(owner: uuid.UUID, config: str) -> uuid.UUID:
    return (await conversations.create_conversation(owner, ConversationCreate(config=config))).id


def says(owner: uuid.UUID, conversation_id: uuid.UUID, text: str) -> SendRequest:
    return SendRequest(
        access=UNRESTRICTED,
        owner=owner,
        conversation_id=conversation_id,
        turns=[Turn(role="user", content=text)],
    )


def user(text: str) -> DatasetMessage:
    return DatasetMessage(role="user", content=text)


def assistant(text: str) -> DatasetMessage:
    return DatasetMessage(role="assistant", content=text)


async def test_items_are_the_counted_history_and_the_stored_reply(
    db: Any, sim: SimulatorProcess, make_chat: MakeChat, faults: BodyFaults
) -> None:
    await make_config("prod", system_prompt="Not part of any item.")
    await make_config("other")
    owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
    stranger = (await keys.create_key(ApiKeyCreate(name="stranger"))).id
    chat = make_chat(sim.base_url)
    faults.add("FAILS", {"X-Sim-Fault": "500"})

    first = await new_conversation(owner, "prod")
    hello = await chat.send(says(owner, first, "Hi 👋"))
    with pytest.raises(LLMError):
        await chat.send(says(owner, first, "FAILS here"))
    await asyncio.sleep(0.01)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    korean = await chat.send(says(owner, first, "안녕하세요?"))
    elsewhere = await chat.send(says(owner, await new_conversation(owner, "other"), "other one"))
    await chat.send(says(stranger, await new_conversation(stranger, "prod"), "not yours"))

    built = await dataset_from_history(owner, config="prod")
    assert built.skipped == 0
    assert [item.id for item in built.items] == [f"{first}/2", f"{first}/6"]
    one, two = built.items
    assert (one.messages, one.expected) == ([user("Hi 👋")], hello.content)
    # The failed exchange is left out with the turn that asked for it, as chat leaves it out.
    assert two.messages == [user("Hi 👋"), assistant(hello.content), user("안녕하세요?")]
    assert two.expected == korean.content
    assert two.metadata["config"] == "prod@1"
    assert two.metadata["message_id"] == str(korean.id)
    assert two.metadata["conversation_id"] == str(first)

    assert [i.id for i in (await dataset_from_history(owner, config="prod", since=cut)).items] == [
        f"{first}/6"
    ]
    assert len((await dataset_from_history(owner, config="prod", limit=1)).items) == 1
    everything = await dataset_from_history(owner)
    assert [item.expected for item in everything.items] == [
        hello.content,
        korean.content,
        elsewhere.content,
    ]
    assert (await dataset_from_history(owner, config="nothing")).items == []

    # What is written out reads back as a valid dataset.
    again = parse_dataset(dataset_lines(encode_items(everything.items).decode()))
    assert again.items == everything.items


async def test_the_limit_is_bounded(db: Any) -> None:
    with pytest.raises(InvalidInputError):
        await dataset_from_history(uuid.uuid4(), limit=0)


async def test_line_separators_in_history_keep_the_dataset_readable(
    db: Any, sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    """One message with U+2028, U+2029 or U+0085 made every dataset built from its key's
    history unreadable (the reader split lines as ``str.splitlines`` does)."""
    await make_config("prod")
    owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
    chat = make_chat(sim.base_url)
    for text in ("one\u2028two", "three\u2029four", "five\u0085six", "seven\x1cend"):
        await chat.send(says(owner, await new_conversation(owner, "prod"), text))
    built = await dataset_from_history(owner)
    out = tmp_path / "history.jsonl"
    write_dataset(out, built.items)
    again = load_dataset(out)
    assert again.items == built.items
    assert [item.messages[0].content for item in again.items if item.messages] == [
        "one\u2028two",
        "three\u2029four",
        "five\u0085six",
        "seven\x1cend",
    ]


async def test_a_nul_stored_before_it_was_refused_is_skipped_not_a_crash(
    sqlite_engine: Engine[Any],
) -> None:
    """SQLite keeps a NUL (PostgreSQL refuses it); rows stored before the API refused it
    are left out of a dataset, and counted, as a dataset would refuse them."""
    use_engine(sqlite_engine)
    async with sqlite_engine.transaction() as transaction:
        owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
        conversation = await conversations.create_conversation(owner, ConversationCreate())
        for seq, (role, content) in enumerate(
            [("user", "fine"), ("assistant", "ok"), ("user", "x\x00y"), ("assistant", "no")],
            start=1,
        ):
            await Message(conversation=conversation.id, seq=seq, role=role, content=content).save()
        await Conversation.update({Conversation.last_seq: 4}).where(
            Conversation.id == conversation.id
        )
        built = await dataset_from_history(owner)
        assert [item.expected for item in built.items] == ["ok"]
        assert built.skipped == 1
        await transaction.rollback()
