"""The send path's hooks (``admit`` before the claim, ``reconcile`` after the record) see
every exchange of every door exactly once: chat, non-streamed and streamed, evaluation
and a saved replay, each with its final stored reply; a send refused before its claim is
reconciled with nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.hooks import Admission
from functions.core.chat.schemas import ReplyDone
from functions.core.chat.service import ChatService
from functions.core.db.sql import fetch
from functions.core.evals import service as evals
from functions.core.evals.datasets import load_dataset
from functions.core.evals.runner import Evaluator, RunOptions, start_run
from functions.core.llm.errors import LLMError
from functions.core.messages import service as messages
from functions.core.messages.claim import ConversationBusyError
from functions.core.messages.schemas import MessageOut
from functions.core.replay.service import ReplayService
from tests.core.chat.conftest import LONG_STREAM, MakeClient, new_party
from tests.core.evals.conftest import write_jsonl
from tests.core.llm.conftest import Faults
from tests.support.simulator import SimulatorProcess


class Books:
    """Hooks that note what they are shown, in order."""

    def __init__(self) -> None:
        self.admitted: list[Admission] = []
        self.reconciled: list[tuple[Admission, MessageOut | None]] = []
        self.events: list[tuple[str, Admission]] = []
        # Whether the model was asked, as each reconcile was told.
        self.generated: list[bool] = []

    async def admit(self, admission: Admission) -> None:
        self.admitted.append(admission)
        self.events.append(("admit", admission))

    async def reconcile(
        self,
        admission: Admission,
        reply: MessageOut | None,
        *,
        generated: bool = True,
        others: Sequence[MessageOut] = (),
    ) -> None:
        self.reconciled.append((admission, reply))
        self.generated.append(generated)
        self.events.append(("reconcile", admission))

    def each_admitted_then_reconciled_once(self) -> bool:
        """Every admission reconciled once, after it was admitted (exchanges of one door,
        such as an evaluation's items, may run at the same time and end in any order)."""
        for admission in self.admitted:
            kinds = [kind for kind, seen in self.events if seen == admission]
            if kinds != ["admit", "reconcile"]:
                return False
        return len(self.reconciled) == len(self.admitted)


async def stored_replies() -> dict[uuid.UUID, MessageOut]:
    rows = await fetch("SELECT id FROM message WHERE role = 'assistant'")
    return {row["id"]: await messages.get_message(row["id"]) for row in rows}


async def test_every_door_passes_each_exchange_through_both_hooks_once(
    shared_db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient, tmp_path: Path
) -> None:
    books = Books()
    client = make_client(sim.base_url)
    chat = ChatService(client, hooks=books)
    party = await new_party()

    await chat.send(party.says("Hello"))
    events = [event async for event in chat.stream(party.says("And again, streamed"))]
    assert isinstance(events[-1], ReplyDone)
    dataset = load_dataset(
        write_jsonl(
            tmp_path / "items.jsonl", [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}]
        )
    )
    evaluation_owner = await evals.evaluation_owner()
    run = await start_run(
        dataset,
        llm=client,
        configs_named=[party.config.name],
        scorers=[],
        options=RunOptions(),
        owner=evaluation_owner,
    )
    await Evaluator(chat, run, dataset).evaluate()
    replayed = await ReplayService(client, chat).replay(
        party.conversation_id, config=party.config.name, save=True
    )
    assert len(replayed.turns) == 2

    # Chat 2, evaluation 2, replay 2: each admitted once, then reconciled once.
    assert len(books.admitted) == 6
    assert books.each_admitted_then_reconciled_once(), books.events
    owners = [admission.owner for admission in books.admitted]
    assert owners == [party.owner] * 2 + [evaluation_owner] * 2 + [party.owner] * 2
    assert books.admitted[0].chars == len("Hello")
    assert books.admitted[0].turns == 1
    # Every reply stored is reconciled exactly once, as it ended, with its final usage.
    stored = await stored_replies()
    replies = [reply for _, reply in books.reconciled]
    assert all(reply is not None for reply in replies)
    seen = [reply.id for reply in replies if reply is not None]
    assert sorted(seen) == sorted(stored)
    for reply in replies:
        assert reply is not None
        final = stored[reply.id]
        assert (reply.status, reply.usage) == ("complete", final.usage)
        assert final.usage is not None
        assert final.usage.completion_tokens > 0


@pytest.mark.parametrize("shared_db", ["postgres"], indirect=True)
async def test_a_failed_reply_is_reconciled_as_stored_and_a_refused_send_with_nothing(
    shared_db: Engine[Any],
    sim: SimulatorProcess,
    make_client: MakeClient,
    faults: Faults,
) -> None:
    books = Books()
    # A short busy budget: the refused send below is refused soon.
    chat = ChatService(make_client(sim.base_url), Exchanges(busy_timeout_s=0.2), hooks=books)
    party = await new_party()

    faults.add({"X-Sim-Fault": "500"}, times=1)
    with pytest.raises(LLMError):
        await chat.send(party.says("This one fails"))
    ((_, failed),) = books.reconciled
    assert failed is not None
    assert failed.status == "failed"

    # Another process's reply holds the conversation: this send is admitted, refused at
    # its claim once its busy budget is spent, and reconciled with nothing stored.
    faults.add(LONG_STREAM, times=1)
    other = ChatService(make_client(sim.base_url))
    holding = asyncio.create_task(other.send(party.says("A long story")))
    await sim.wait_for_async(lambda s: s["in_flight"] == 1)
    with pytest.raises(ConversationBusyError):
        await chat.send(party.says("Me too"))
    assert len(books.admitted) == 2
    assert books.reconciled[-1] == (books.admitted[-1], None)
    assert books.generated == [True, False]  # the refused claim asked the model nothing
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
