"""Datasets from seeded history, on both engines: the prompt rule's history, the stored reply
as expected, and the owner, configuration, time and limit filters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from functions.core.chat.schemas import SendRequest
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.errors import InvalidInputError
from functions.core.evals.datasets import encode_items, parse_dataset
from functions.core.evals.history import dataset_from_history
from functions.core.evals.schemas import DatasetMessage
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.llm.errors import LLMError
from functions.core.messages.schemas import Turn
from tests.core.evals.conftest import BodyFaults, MakeChat, make_config
from tests.support.simulator import SimulatorProcess


async def new_conversation(owner: uuid.UUID, config: str) -> uuid.UUID:
    return (await conversations.create_conversation(owner, ConversationCreate(config=config))).id


def says(owner: uuid.UUID, conversation_id: uuid.UUID, text: str) -> SendRequest:
    return SendRequest(
        owner=owner, conversation_id=conversation_id, turns=[Turn(role="user", content=text)]
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
    again = parse_dataset(encode_items(everything.items).decode().splitlines())
    assert again.items == everything.items


async def test_the_limit_is_bounded(db: Any) -> None:
    with pytest.raises(InvalidInputError):
        await dataset_from_history(uuid.uuid4(), limit=0)
