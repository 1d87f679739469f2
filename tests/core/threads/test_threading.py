"""A resent history lands in the conversation that holds it, on PostgreSQL and SQLite:
appended while the conversation is where the client left it, a branch (a new conversation
recording its fork point) when it moved on, a new conversation when nothing matches; never
an error, never a change to the first conversation."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.schemas import SendRequest
from functions.core.chat.service import ChatService
from functions.core.chat.targets import Target
from functions.core.conversations import service as conversations
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.llm.errors import LLMError
from functions.core.messages.schemas import Turn
from functions.core.threads import service as threads
from functions.core.threads.chain import chain
from tests.core.chat.conftest import MakeClient, new_key, new_party
from tests.core.llm.conftest import Faults
from tests.core.threads.conftest import (
    Client,
    as_resent,
    conversation_rows,
    message_rows,
    resend,
    user,
)
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def client_of(chat: ChatService, **config: Any) -> Client:
    party = await new_party(**config)
    return Client(chat=chat, owner=party.owner, config=party.config.name)


async def test_a_chat_resent_in_full_every_turn_is_one_conversation(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    client = await client_of(ChatService(make_client(sim.base_url)))
    for turn in range(5):
        await client.says(f"turn {turn} · 차례 {turn}")

    # new_party's own conversation (unused here) and the thread's.
    [_, thread] = await conversation_rows(client.owner)
    assert thread["last_seq"] == 10
    assert thread["forked_from_conversation_id"] is None
    rows = await message_rows(thread["id"])
    assert [row["role"] for row in rows] == ["user", "assistant"] * 5
    assert [row["content"] for row in rows] == [turn.content for turn in client.history]
    assert all(row["status"] == "complete" for row in rows)
    # Every message carries the hash of the history ending on it, the reply's included.
    assert [bytes(row["chain_hash"]) for row in rows] == chain(client.owner, client.history)


async def test_two_resends_of_the_same_turn_at_once_append_one_and_branch_the_other(
    shared_db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    def process() -> ChatService:
        """A gateway process of its own: its client, locks, caches and connections."""
        return ChatService(make_client(sim.base_url), Exchanges(busy_timeout_s=scaled(20)))

    one, two = process(), process()
    client = await client_of(one)
    first = await client.says("hello")
    history = [*client.history, user("and then?")]
    # Both located before either claims: both expect the conversation as it is now.
    placed = [
        await threads.threaded(
            SendRequest(
                access=UNRESTRICTED,
                owner=client.owner,
                turns=history,
                prompt="exact",
                target=Target(config=client.config),
            )
        )
        for _ in range(2)
    ]
    assert placed[0].conversation_id == placed[1].conversation_id == first.conversation_id
    # Another seed for the second: two different replies, so each client's next turn
    # has only one place to go.
    placed[1] = msgspec.structs.replace(placed[1], sampling={"seed": 7})
    faults.add({"X-Sim-TTFT-Ms": "200"}, times=2)
    replies = await asyncio.gather(one.send(placed[0]), two.send(placed[1]))
    assert replies[0].content != replies[1].content

    rows = await conversation_rows(client.owner)
    [_, original, branch] = rows
    assert original["id"] == first.conversation_id
    assert original["last_seq"] == 4
    assert (branch["forked_from_conversation_id"], branch["forked_from_message_id"]) == (
        first.conversation_id,
        first.id,
    )
    assert branch["last_seq"] == 4
    assert {reply.conversation_id for reply in replies} == {original["id"], branch["id"]}
    for row in (original, branch):
        stored = await message_rows(row["id"])
        assert [m["content"] for m in stored[:3]] == [t.content for t in history]
        assert [m["status"] for m in stored] == ["complete"] * 4

    # The branch's client carries on in the branch.
    in_branch = next(reply for reply in replies if reply.conversation_id == branch["id"])
    later = await resend(
        one, client.owner, client.config, [*history, as_resent(in_branch), user("more")]
    )
    assert (later.conversation_id, later.seq) == (branch["id"], 6)


async def test_a_regenerated_last_turn_is_a_branch_and_the_first_stays_as_it_was(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    chat = ChatService(make_client(sim.base_url))
    client = await client_of(chat)
    first = await client.says("one")
    second = await client.says("two")
    before = await message_rows(first.conversation_id)

    # Regenerate: the history up to the last user turn, again.
    regenerated = await resend(chat, client.owner, client.config, client.history[:3])

    assert regenerated.conversation_id != first.conversation_id
    assert await message_rows(first.conversation_id) == before
    [_, _, branch] = await conversation_rows(client.owner)
    assert branch["id"] == regenerated.conversation_id
    assert (branch["forked_from_conversation_id"], branch["forked_from_message_id"]) == (
        first.conversation_id,
        first.id,
    )
    assert [m["content"] for m in await message_rows(branch["id"])] == [
        "one",
        first.content,
        "two",
        regenerated.content,
    ]
    # Both threads go on where their clients left them.
    on_first = await resend(chat, client.owner, client.config, [*client.history, user("3")])
    assert (on_first.conversation_id, on_first.seq) == (first.conversation_id, second.seq + 2)
    on_branch = await resend(
        chat,
        client.owner,
        client.config,
        [*client.history[:3], as_resent(regenerated), user("3")],
    )
    assert (on_branch.conversation_id, on_branch.seq) == (branch["id"], 6)


async def test_two_keys_with_identical_histories_never_meet(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    chat = ChatService(make_client(sim.base_url))
    alice = await client_of(chat)
    bob = Client(chat=chat, owner=await new_key("bob"), config=alice.config)
    for text in ["same question", "same follow-up"]:
        mine, theirs = await alice.says(text), await bob.says(text)
        # The simulator answers a prompt the same way: the histories stay identical.
        assert mine.content == theirs.content
        assert mine.conversation_id != theirs.conversation_id

    assert alice.history == bob.history
    assert set(chain(alice.owner, alice.history)).isdisjoint(chain(bob.owner, bob.history))
    [bobs] = await conversation_rows(bob.owner)
    assert bobs["last_seq"] == 4
    [_, alices] = await conversation_rows(alice.owner)
    assert alices["last_seq"] == 4


async def test_a_tool_call_round_trip_threads_as_clients_send_it_back(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    chat = ChatService(make_client(sim.base_url))
    client = await client_of(chat, extra={"tools": [WEATHER], "tool_choice": "auto"})
    ask = "Weather in Seoul? 서울 날씨"
    called = await client.says(ask)
    [call] = called.tool_calls or []
    assert called.content == ""

    # Sent back as LangChain does: the question as text parts, no content beside the
    # tool calls, no `type`, the arguments re-serialised with json.dumps's spacing and
    # escapes; then the tool's answer.
    arguments = json.dumps(json.loads(call["function"]["arguments"]))
    assert arguments != call["function"]["arguments"]
    history = [
        Turn(role="user", content=ask, parts=[{"type": "text", "text": ask}]),
        Turn(
            role="assistant",
            tool_calls=[
                {"id": call["id"], "function": {"name": "get_weather", "arguments": arguments}}
            ],
        ),
        Turn(role="tool", content="Sunny, 21°C", tool_call_id=call["id"]),
    ]
    answered = await resend(chat, client.owner, client.config, history)

    assert answered.conversation_id == called.conversation_id
    rows = await message_rows(called.conversation_id)
    assert [(m["role"], m["status"]) for m in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "complete"),
        ("assistant", "complete"),
    ]
    assert answered.tool_calls is None
    # And the next turn finds the final answer too.
    follow = await resend(
        chat, client.owner, client.config, [*history, as_resent(answered), user("thanks")]
    )
    assert (follow.conversation_id, follow.seq) == (called.conversation_id, 6)


async def test_a_history_edited_in_the_middle_starts_a_new_conversation(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    chat = ChatService(make_client(sim.base_url))
    client = await client_of(chat)
    first = await client.says("one")
    await client.says("two")
    before = await message_rows(first.conversation_id)

    edited = [*client.history]
    edited[2] = user("two, edited")
    elsewhere = await resend(chat, client.owner, client.config, [*edited, user("three")])

    assert elsewhere.conversation_id != first.conversation_id
    assert await message_rows(first.conversation_id) == before
    rows = await message_rows(elsewhere.conversation_id)
    assert [m["content"] for m in rows[:5]] == [t.content for t in [*edited, user("three")]]
    assert len(rows) == 6
    # It shares the first exchange with the original: a branch of its first reply.
    [_, _, branch] = await conversation_rows(client.owner)
    assert branch["forked_from_message_id"] == first.id
    # The key sees where its branch came from, as the chat API shows the conversation.
    shown = await conversations.get_conversation(client.owner, elsewhere.conversation_id)
    assert (shown.forked_from_conversation_id, shown.forked_from_message_id) == (
        first.conversation_id,
        first.id,
    )
    assert (
        await conversations.get_conversation(client.owner, first.conversation_id)
    ).forked_from_conversation_id is None

    # Edited at the very start: nothing in common, a new conversation with no fork point.
    fresh = await resend(
        chat, client.owner, client.config, [user("zero"), *client.history[1:], user("x")]
    )
    [*_, unrelated] = await conversation_rows(client.owner)
    assert unrelated["id"] == fresh.conversation_id
    assert unrelated["forked_from_conversation_id"] is None


async def test_a_retry_after_a_failed_reply_continues_the_conversation(
    db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    """Only complete replies get a hash (the text of a failed one is not what the client
    would resend), so a failed exchange is never matched itself; but a client retrying
    after it (the SDKs retry a 5xx twice) continues the same conversation after the
    failures, instead of leaving a branch per attempt."""
    chat = ChatService(make_client(sim.base_url))
    client = await client_of(chat)
    first = await client.says("one")
    # One failed attempt (two in a row would eject the only upstream).
    faults.add({"X-Sim-Fault": "500"}, times=1)
    asked = [*client.history, user("two")]
    with pytest.raises(LLMError):
        await resend(chat, client.owner, client.config, asked)
    rows = await message_rows(first.conversation_id)
    assert [(r["role"], r["status"]) for r in rows[2:]] == [
        ("user", "complete"),
        ("assistant", "failed"),
    ]
    assert rows[-1]["chain_hash"] is None

    located = await threads.locate(client.owner, asked)
    assert located.conversation_id == first.conversation_id
    assert located.expect_last_seq == rows[-1]["seq"]
    assert located.forked_from is None
    answered = await client.says("two")  # the retry that succeeds
    assert answered.conversation_id == first.conversation_id
    # No branch: the retry is the same conversation's next exchange, after the failure.
    assert all(
        row["forked_from_message_id"] is None for row in await conversation_rows(client.owner)
    )
    # Its resends thread on from it.
    assert (await client.says("three")).conversation_id == first.conversation_id

    # Once a reply after the matched one completed, the conversation moved on: a resend
    # of the older history with another turn is a branch.
    moved = await threads.locate(client.owner, [*client.history[:2], user("other")])
    assert moved.conversation_id is None
    assert moved.forked_from is not None
    assert moved.forked_from.message_id == first.id


async def test_the_lookup_is_one_indexed_query(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    from functions.core.db.sql import fetch
    from functions.core.threads.service import _PG_LOCATE, _sqlite_locate

    client = await client_of(ChatService(make_client(sim.base_url)))
    await client.says("one")
    hashes = chain(client.owner, client.history)
    if isinstance(db, PostgresEngine):
        # A handful of rows: the planner would read the table whole, so it is told not
        # to, to show the index serves the lookup.
        await fetch("SET LOCAL enable_seqscan = off")
        plan = await fetch("EXPLAIN " + _PG_LOCATE, b"".join(hashes), "1,2", client.owner)
        text = "\n".join(row["QUERY PLAN"] for row in plan)
        assert "Seq Scan on message" not in text, text
    else:
        plan = await fetch(
            "EXPLAIN QUERY PLAN " + _sqlite_locate(2), 1, hashes[0], 2, hashes[1], client.owner
        )
        lines = [str(row["detail"]) for row in plan]
        text = "\n".join(lines)
        # Messages and conversations are searched by index, never scanned.
        assert not any(line.startswith(("SCAN m", "SCAN c")) for line in lines), text
    assert "message_chain_hash_idx" in text, text
    found = msgspec.to_builtins(await threads.locate(client.owner, [*client.history, user("x")]))
    assert found["expect_last_seq"] == 2
    assert uuid.UUID(found["conversation_id"])


async def test_a_new_thread_asked_for_is_new_and_later_resends_find_it(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    chat = ChatService(make_client(sim.base_url))
    client = await client_of(chat)
    first = await client.says("one")

    def request(history: list[Turn]) -> SendRequest:
        return SendRequest(
            access=UNRESTRICTED,
            owner=client.owner,
            turns=history,
            prompt="exact",
            target=Target(config=client.config),
        )

    # The same history again, asked into a new conversation (X-Switchboard-Conversation: new).
    again = await chat.send(threads.new_thread(request(client.history[:1])))
    assert again.conversation_id != first.conversation_id
    following = [client.history[0], as_resent(again), user("two")]
    # Both conversations end on the same reply (the simulator answers alike): the newest wins.
    assert (await resend(chat, client.owner, client.config, following)).conversation_id == (
        again.conversation_id
    )


async def test_a_resend_in_the_same_process_branches_without_waiting_for_the_other(
    db: Engine[Any], sim: SimulatorProcess, faults: Faults, make_client: MakeClient
) -> None:
    """In one process the first send holds its conversation while its reply is generated;
    the second, threaded, does not queue behind it (it would get ``conversation_busy``
    after the busy timeout): it branches at once."""
    chat = ChatService(make_client(sim.base_url), Exchanges(busy_timeout_s=0.2))
    client = await client_of(chat)
    first = await client.says("hello")
    history = [*client.history, user("and then?")]
    request = SendRequest(
        access=UNRESTRICTED,
        owner=client.owner,
        turns=history,
        prompt="exact",
        target=Target(config=client.config),
    )
    placed = [await threads.threaded(request) for _ in range(2)]
    faults.add({"X-Sim-TTFT-Ms": str(int(scaled(3) * 1000))}, times=1)
    slow = asyncio.create_task(chat.send(placed[0]))
    await sim.wait_for_async(lambda stats: stats["chat_in_flight"] == 1)

    branched = await chat.send(placed[1])
    assert not slow.done()
    appended = await slow
    assert appended.conversation_id == first.conversation_id
    [*_, branch] = await conversation_rows(client.owner)
    assert branch["id"] == branched.conversation_id
    assert branch["forked_from_message_id"] == first.id
