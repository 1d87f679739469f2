"""An unsaved replay's turns go through the send path in its not-stored mode
(``ChatService.ask_unstored``): the hooks see each turn once, a refusing ``admit`` stops it
before the model is asked, a draining runtime refuses it and a shutdown's grace ends one in
flight; nothing is ever stored."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.hooks import Admission
from functions.core.chat.service import ChatService
from functions.core.chat.targets import Target
from functions.core.db.engine import use_engine
from functions.core.db.sql import fetch
from functions.core.errors import SwitchboardError
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.liveness.inflight import InFlight, ShuttingDownError
from functions.core.llm.client import LLMClient
from functions.core.messages.schemas import MessageOut
from functions.core.replay.service import ReplayService
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from tests.core.evals.conftest import BodyFaults
from tests.core.replay.conftest import make_config, seed_conversation
from tests.core.replay.test_saved_in_flight import LONG_STREAM, SLOW, sigterm_heard
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled


class Books:
    """Hooks that note what they are shown; ``refuse`` makes ``admit`` say no."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.events: list[tuple[str, Admission, MessageOut | None]] = []

    async def admit(self, admission: Admission) -> None:
        self.events.append(("admit", admission, None))
        if self.refuse:
            raise SwitchboardError("over quota")

    async def reconcile(self, admission: Admission, reply: MessageOut | None) -> None:
        self.events.append(("reconcile", admission, reply))


async def two_turns(chat: ChatService) -> tuple[uuid.UUID, uuid.UUID]:
    await make_config("prod")
    await make_config("candidate", system_prompt="Be brief.")
    owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
    return owner, await seed_conversation(chat, owner, "prod", ["Hi 👋", "안녕? More?"])


async def message_count() -> int:
    return int((await fetch("SELECT count(*) AS n FROM message"))[0]["n"])


async def test_each_unsaved_turn_is_admitted_and_reconciled_once_and_nothing_is_stored(
    db: Engine[Any], llm: LLMClient, sim: SimulatorProcess
) -> None:
    owner, original = await two_turns(ChatService(llm))
    before = await message_count()
    books = Books()
    replayer = ReplayService(llm, ChatService(llm, hooks=books))

    result = await replayer.replay(original, config="candidate")

    assert [turn.replayed.status for turn in result.turns] == ["complete", "complete"]
    assert all(turn.replayed.content for turn in result.turns)
    assert [(kind, reply) for kind, _, reply in books.events] == [
        ("admit", None),
        ("reconcile", None),
        ("admit", None),
        ("reconcile", None),
    ]
    admitted = [admission for kind, admission, _ in books.events if kind == "admit"]
    assert {(a.owner, a.conversation_id) for a in admitted} == {(owner, original)}
    assert {a.target for a in admitted} == {Target(config="candidate", version=1)}
    # An unsaved turn sends its whole prompt (the configuration's system prompt, the
    # history replayed so far, the turn), so the admission counts all of it.
    assert [a.turns for a in admitted] == [2, 4]
    assert [a.chars for a in admitted] == [
        sum(len(turn.content) for turn in a.prompt or ()) for a in admitted
    ]
    first, second = (a.prompt or [] for a in admitted)
    assert [turn.content for turn in first] == ["Be brief.", "Hi 👋"]
    assert [turn.role for turn in second] == ["system", "user", "assistant", "user"]
    assert second[-1].content == "안녕? More?"
    assert [a.request_id for a in admitted] == [
        f"replay-{str(original)[:8]}-1",
        f"replay-{str(original)[:8]}-2",
    ]
    assert await message_count() == before


async def test_a_hook_that_refuses_stops_the_turn_before_the_model_is_asked(
    db: Engine[Any], llm: LLMClient, sim: SimulatorProcess
) -> None:
    _, original = await two_turns(ChatService(llm))
    asked = (await sim.stats_async())["total_requests"]
    books = Books(refuse=True)

    with pytest.raises(SwitchboardError, match="over quota"):
        await ReplayService(llm, ChatService(llm, hooks=books)).replay(original, config="candidate")

    assert (await sim.stats_async())["total_requests"] == asked
    # Refused by ``admit`` itself: nothing to reconcile, as for any door's send.
    assert [(kind, reply) for kind, _, reply in books.events] == [("admit", None)]


async def test_a_draining_runtime_refuses_an_unsaved_turn(
    db: Engine[Any], llm: LLMClient, sim: SimulatorProcess
) -> None:
    _, original = await two_turns(ChatService(llm))
    asked = (await sim.stats_async())["total_requests"]
    in_flight = InFlight(grace_s=0)
    in_flight.draining = True  # as SIGTERM leaves it

    with pytest.raises(ShuttingDownError):
        await ReplayService(llm, ChatService(llm, in_flight=in_flight)).replay(
            original, config="candidate"
        )
    assert (await sim.stats_async())["total_requests"] == asked


async def test_an_unsaved_turn_in_flight_is_ended_when_the_grace_runs_out(
    pg: Engine[Any],
    pg_url: str,
    tmp_path: Path,
    llm: LLMClient,
    sim: SimulatorProcess,
    faults: BodyFaults,
) -> None:
    settings = Settings(
        database_url=pg_url, shutdown_grace_s=0.5, outcome_journal_dir=str(tmp_path)
    )
    loop = asyncio.get_running_loop()
    with sigterm_heard():
        async with open_runtime(settings, llm=llm, serving=True, configure_logs=False) as rt:
            await make_config("prod")
            await make_config("candidate")
            owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
            original = await seed_conversation(rt.chat, owner, "prod", [f"{SLOW}: go on"])
            before = await message_count()
            faults.add(SLOW, LONG_STREAM)
            replaying = asyncio.create_task(
                ReplayService.of(rt).replay(original, config="candidate")
            )
            await sim.wait_for_async(lambda s: s["in_flight"] == 1)
            signal.raise_signal(signal.SIGTERM)
            started = loop.time()
    # The runtime's drain waited for the unsaved turn, then cut it at the grace's end
    # (the stream lasts 20 s).
    assert loop.time() - started < scaled(10)
    assert replaying.done()
    with pytest.raises(ShuttingDownError):
        replaying.result()
    await sim.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    use_engine(pg)
    assert await message_count() == before
