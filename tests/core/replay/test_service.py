"""Replays on PostgreSQL and SQLite against the simulator: both modes, a failed turn on
either side, a missing configuration, saved replays, and many conversations at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.conversations import service as conversations
from functions.core.errors import InvalidInputError, NotFoundError
from functions.core.evals.history import dataset_from_history
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.llm.client import LLMClient
from functions.core.messages import service as messages
from functions.core.replay.schemas import ReplayResult
from functions.core.replay.service import ReplayFailure, ReplayService
from tests.core.evals.conftest import BodyFaults
from tests.core.replay.conftest import FAILS, make_config, seed_conversation

TEXTS = ["Hi 👋 what is Switchboard?", f"{FAILS}: tell me more", "안녕하세요? And in one word?"]


async def new_owner(name: str = "app") -> uuid.UUID:
    return (await keys.create_key(ApiKeyCreate(name=name))).id


async def test_faithful_replay_on_the_version_that_answered_sends_what_chat_sent(
    db: Engine[Any], chat: ChatService, replayer: ReplayService, faults: BodyFaults
) -> None:
    await make_config("prod", system_prompt="Be brief.", temperature=0.2, seed=7)
    owner = await new_owner()
    conversation = await seed_conversation(chat, owner, "prod", TEXTS)
    sent_by_chat = list(faults.bodies)
    faults.bodies.clear()

    result = await replayer.replay(conversation, config="prod", version=1, mode="faithful")

    # Every turn is asked again, the one whose reply failed included, in the same words
    # chat used: same system prompt, same history (without the failed exchange), same
    # sampling. The simulator answers a request the same way every time.
    assert faults.bodies == sent_by_chat
    one, two, three = result.turns
    assert [t.index for t in result.turns] == [1, 2, 3]
    assert [t.asked for t in result.turns] == TEXTS
    for same in (one, three):
        assert same.original is not None
        assert same.original.status == "complete"
        assert same.replayed.content == same.original.content
        assert same.similarity == 1.0
        assert not same.changed
        assert same.replayed.completion_tokens == same.original.completion_tokens
        assert same.replayed.prompt_tokens == same.original.prompt_tokens
        assert same.replayed.finish_reason == same.original.finish_reason
        assert same.replayed.latency_ms is not None
        assert same.replayed.ttft_ms is not None
        assert same.replayed.message_id is None  # not saved
    # The failed original is shown as failed; this time the model answered.
    assert two.original is not None
    assert (two.original.status, two.original.error_code) == ("failed", "llm_error")
    assert two.replayed.status == "complete"
    assert two.similarity is None
    assert two.changed
    assert [t.prompt_messages for t in result.turns] == [2, 4, 4]
    assert result.config == "prod@1"
    assert result.saved_conversation_id is None
    summary = result.summary()
    assert (summary.turns, summary.changed, summary.original_failed) == (3, 1, 1)
    assert summary.mean_similarity == 1.0

    # The evaluation's dataset from history holds the same chats for the completed turns.
    items = (await dataset_from_history(owner, config="prod")).items
    assert [b["messages"][1:] for b in (faults.bodies[0], faults.bodies[2])] == [
        msgspec.to_builtins(item.messages) for item in items
    ]
    # Nothing was stored by a replay that was not saved.
    assert (await conversations.list_conversations(owner)).data[0].id == conversation
    assert len((await conversations.list_conversations(owner)).data) == 1


async def test_rollout_sends_the_replayed_replies_as_history(
    db: Engine[Any], chat: ChatService, replayer: ReplayService, faults: BodyFaults
) -> None:
    await make_config("prod", system_prompt="Be brief.")
    await make_config("candidate", system_prompt="Be thorough. 🙂", temperature=0.9)
    owner = await new_owner()
    texts = ["First question", "Second question", "Third question"]
    conversation = await seed_conversation(chat, owner, "prod", texts)
    faults.bodies.clear()

    faithful = await replayer.replay(conversation, config="candidate", mode="faithful")
    faithful_sent = list(faults.bodies)
    faults.bodies.clear()
    rollout = await replayer.replay(conversation, config="candidate", mode="rollout")
    rollout_sent = list(faults.bodies)

    system = {"role": "system", "content": "Be thorough. 🙂"}
    assert all(body["messages"][0] == system for body in faithful_sent + rollout_sent)
    assert all(body["temperature"] == 0.9 for body in faithful_sent + rollout_sent)
    # The first turn has no history: both modes ask the same and get the same.
    assert faithful.turns[0].replayed.content == rollout.turns[0].replayed.content
    assert faithful.turns[0].similarity is not None
    assert faithful.turns[0].similarity < 1.0
    # Later turns: faithful sends the original replies, rollout the replayed ones.
    originals = [t.original.content for t in faithful.turns if t.original is not None]
    assert [m["content"] for m in faithful_sent[2]["messages"][1:]] == [
        texts[0],
        originals[0],
        texts[1],
        originals[1],
        texts[2],
    ]
    replayed = [t.replayed.content for t in rollout.turns]
    assert [m["content"] for m in rollout_sent[2]["messages"][1:]] == [
        texts[0],
        replayed[0],
        texts[1],
        replayed[1],
        texts[2],
    ]
    assert (faithful.mode, rollout.mode) == ("faithful", "rollout")
    assert rollout.config == "candidate@1"


async def test_a_turn_that_fails_in_the_replay_is_shown_and_left_out_of_the_rollout(
    db: Engine[Any], chat: ChatService, replayer: ReplayService, faults: BodyFaults
) -> None:
    await make_config("prod")
    owner = await new_owner()
    conversation = await seed_conversation(chat, owner, "prod", ["one", "BREAKS two", "three"])
    faults.add("BREAKS", {"X-Sim-Fault": "500"}, times=1)
    faults.bodies.clear()

    result = await replayer.replay(conversation, config="prod", mode="rollout")

    broken = result.turns[1]
    assert broken.original is not None
    assert broken.original.status == "complete"
    assert (broken.replayed.status, broken.replayed.error_code) == ("failed", "llm_error")
    assert broken.replayed.error_message
    assert broken.similarity is None
    assert broken.changed
    # As chat would: the failed exchange is not part of the next turn's history.
    assert [m["content"] for m in faults.bodies[2]["messages"]] == [
        "one",
        result.turns[0].replayed.content,
        "three",
    ]
    assert result.summary().replayed_failed == 1


async def test_a_missing_configuration_version_or_conversation_sends_nothing(
    db: Engine[Any], chat: ChatService, replayer: ReplayService, faults: BodyFaults
) -> None:
    await make_config("prod")
    conversation = await seed_conversation(chat, await new_owner(), "prod", ["hello"])
    faults.bodies.clear()

    with pytest.raises(NotFoundError, match="nope"):
        await replayer.replay(conversation, config="nope")
    with pytest.raises(NotFoundError):
        await replayer.replay(conversation, config="prod", version=2)
    with pytest.raises(NotFoundError):
        await replayer.replay(uuid.uuid4(), config="prod")
    with pytest.raises(InvalidInputError, match="mode"):
        await replayer.replay(conversation, config="prod", mode="sideways")  # type: ignore[arg-type]
    assert faults.bodies == []


async def test_a_saved_faithful_replay_is_a_conversation_of_the_same_key(
    db: Engine[Any], chat: ChatService, replayer: ReplayService, faults: BodyFaults
) -> None:
    await make_config("prod", system_prompt="Be brief.")
    await make_config("candidate", system_prompt="Be thorough.")
    owner = await new_owner()
    conversation = await seed_conversation(chat, owner, "prod", TEXTS, title="Support chat")
    faults.bodies.clear()

    result = await replayer.replay(conversation, config="candidate", mode="faithful", save=True)

    saved = result.saved_conversation_id
    assert saved is not None
    about = await conversations.get_conversation(owner, saved)
    assert about.metadata == {
        "replay": {
            "of": str(conversation),
            "config": "candidate",
            "config_version": 1,
            "mode": "faithful",
            "source": "database",
        }
    }
    assert about.config == "candidate"
    assert about.title == "Replay of Support chat (candidate@1, faithful)"
    stored = (await messages.list_messages(owner, saved)).data
    assert [(m.role, m.status) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ] * 3
    assert [m.content for m in stored if m.role == "user"] == TEXTS
    replies = [m for m in stored if m.role == "assistant"]
    assert [r.id for r in replies] == [t.replayed.message_id for t in result.turns]
    assert [r.content for r in replies] == [t.replayed.content for t in result.turns]
    assert all(r.config and (r.config.name, r.config.version) == ("candidate", 1) for r in replies)
    assert [r.usage.completion_tokens if r.usage else None for r in replies] == [
        t.replayed.completion_tokens for t in result.turns
    ]
    # Faithful even when saved: the last turn was sent the original history, not the
    # saved conversation's.
    originals = [t.original.content for t in result.turns if t.original is not None]
    assert [m["content"] for m in faults.bodies[2]["messages"][1:]] == [
        TEXTS[0],
        originals[0],
        TEXTS[2],
    ]
    # The original is untouched.
    assert len((await messages.list_messages(owner, conversation)).data) == 6


class CountingLLM:
    """An LLM client that counts how many replies it generates at once."""

    def __init__(self, llm: LLMClient) -> None:
        self._llm = llm
        self.in_flight = 0
        self.most = 0

    async def collect_chat(self, *args: Any, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await self._llm.collect_chat(*args, **kwargs)
        finally:
            self.in_flight -= 1


async def test_many_conversations_replay_with_bounded_concurrency(
    pg: Engine[Any], chat: ChatService, llm: LLMClient, faults: BodyFaults
) -> None:
    await make_config("prod")
    await make_config("candidate", system_prompt="Answer in French.")
    owner = await new_owner()
    seeded = [
        await seed_conversation(chat, owner, "prod", [f"question {i}", f"follow-up {i}"])
        for i in range(5)
    ]
    faults.add('"messages"', {"X-Sim-TTFT-Ms": "40"})
    counting = CountingLLM(llm)
    replayer = ReplayService(counting, ChatService(counting))  # type: ignore[arg-type]
    progress: list[tuple[int, int]] = []
    missing = uuid.uuid4()

    results = await replayer.replay_many(
        [*seeded[:3], missing, *seeded[3:]],
        config="candidate",
        mode="rollout",
        save=True,
        concurrency=2,
        on_result=lambda _, done, total: progress.append((done, total)),
    )

    assert counting.most == 2
    assert progress == [(n, 6) for n in range(1, 7)]
    failure = results[3]
    assert isinstance(failure, ReplayFailure)
    assert (failure.conversation_id, failure.error_code) == (missing, "not_found")
    done = [r for r in results if isinstance(r, ReplayResult)]
    assert [r.conversation_id for r in done] == seeded
    assert all(len(r.turns) == 2 and r.config == "candidate@1" for r in done)
    assert len({r.saved_conversation_id for r in done}) == 5
    # Every saved replay holds its two exchanges.
    for result in done:
        assert result.saved_conversation_id is not None
        stored = (await messages.list_messages(owner, result.saved_conversation_id)).data
        assert [m.content for m in stored if m.role == "assistant"] == [
            t.replayed.content for t in result.turns
        ]
    with pytest.raises(InvalidInputError):
        await replayer.replay_many(seeded, config="candidate", concurrency=0)
    await asyncio.sleep(0)
