"""A saved replay's turns are sends like any other: the runtime's drain waits for one in
flight and ends it when the grace runs out, and deleting its conversation aborts it."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.recorder import ConversationGoneError
from functions.core.chat.service import ChatService
from functions.core.db.engine import use_engine
from functions.core.db.sql import fetch
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.liveness.inflight import ShuttingDownError
from functions.core.llm.client import LLMClient
from functions.core.replay.schemas import ReplayResult
from functions.core.replay.service import ReplayService
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from tests.core.evals.conftest import BodyFaults
from tests.core.replay.conftest import make_config, seed_conversation
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

SLOW = "SLOW-STORY"
# 400 tokens 50 ms apart: 20 s, far longer than any wait below, unless it is aborted.
LONG_STREAM = {"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "400"}
# 60 tokens 50 ms apart: 3 s, well inside the drain's grace.
SHORT_STREAM = {"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "60"}


async def seeded(chat: ChatService) -> tuple[uuid.UUID, uuid.UUID]:
    """A key and its one-exchange conversation on ``prod``; ``candidate`` to replay on."""
    await make_config("prod")
    await make_config("candidate", system_prompt="Take your time.")
    owner = (await keys.create_key(ApiKeyCreate(name="app"))).id
    return owner, await seed_conversation(chat, owner, "prod", [f"{SLOW}: tell me"])


async def saved_replies(conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    """The replies stored in the replay of ``conversation_id`` (every other conversation)."""
    return await fetch(
        "SELECT status, error_code, content FROM message WHERE role = 'assistant' "
        "AND model IS NOT NULL AND conversation <> {}",
        conversation_id,
    )


@contextmanager
def sigterm_heard() -> Iterator[list[int]]:
    """SIGTERM as a deploy sends it, to this process: the serving runtime chains its drain
    before the handler installed here, which only notes it (the default would kill the
    test run)."""
    heard: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _: heard.append(sig))
    try:
        yield heard
    finally:
        signal.signal(signal.SIGTERM, previous)


async def replay_in_runtime(
    pg_url: str,
    tmp_path: Path,
    llm: LLMClient,
    sim: SimulatorProcess,
    faults: BodyFaults,
    *,
    grace_s: float,
    stream: dict[str, str],
) -> tuple[asyncio.Task[ReplayResult], uuid.UUID, float]:
    """Open a serving runtime, start a saved replay in it, send SIGTERM once the model is
    generating, and leave the runtime (its drain). Returns the replay's task,
    the original conversation and how long leaving took."""
    settings = Settings(
        database_url=pg_url, shutdown_grace_s=grace_s, outcome_journal_dir=str(tmp_path)
    )
    loop = asyncio.get_running_loop()
    with sigterm_heard() as heard:
        async with open_runtime(settings, llm=llm, serving=True, configure_logs=False) as rt:
            _, original = await seeded(rt.chat)
            faults.add(SLOW, stream)
            replaying = asyncio.create_task(
                ReplayService.of(rt).replay(original, config="candidate", save=True)
            )
            await sim.wait_for_async(lambda s: s["in_flight"] == 1)
            signal.raise_signal(signal.SIGTERM)
            started = loop.time()
    assert heard == [signal.SIGTERM]
    return replaying, original, loop.time() - started


async def test_the_drain_waits_for_a_saved_replay_in_flight(
    pg: Engine[Any],
    pg_url: str,
    tmp_path: Path,
    llm: LLMClient,
    sim: SimulatorProcess,
    faults: BodyFaults,
) -> None:
    replaying, original, _ = await replay_in_runtime(
        pg_url, tmp_path, llm, sim, faults, grace_s=scaled(120), stream=SHORT_STREAM
    )

    # Leaving the runtime waited for the turn: it is done, answered and stored whole.
    assert replaying.done()
    result = replaying.result()
    assert [turn.replayed.status for turn in result.turns] == ["complete"]
    use_engine(pg)
    stored = await saved_replies(original)
    assert [(row["status"], row["content"]) for row in stored] == [
        ("complete", result.turns[0].replayed.content)
    ]


async def test_a_saved_replay_is_ended_and_recorded_when_the_grace_runs_out(
    pg: Engine[Any],
    pg_url: str,
    tmp_path: Path,
    llm: LLMClient,
    sim: SimulatorProcess,
    faults: BodyFaults,
) -> None:
    replaying, original, took = await replay_in_runtime(
        pg_url, tmp_path, llm, sim, faults, grace_s=0.5, stream=LONG_STREAM
    )

    # The 20 s stream was cut at the grace's end, not waited for.
    assert took < 10
    assert replaying.done()
    with pytest.raises(ShuttingDownError):
        replaying.result()
    await sim.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    use_engine(pg)
    stored = await saved_replies(original)
    assert [(row["status"], row["error_code"]) for row in stored] == [("failed", "shutdown")]
    assert stored[0]["content"]  # what arrived before the end is kept


async def test_deleting_a_saved_replays_conversation_aborts_it(
    pg: Engine[Any],
    chat: ChatService,
    replayer: ReplayService,
    sim: SimulatorProcess,
    faults: BodyFaults,
) -> None:
    owner, original = await seeded(chat)
    faults.add(SLOW, LONG_STREAM)
    replaying = asyncio.create_task(replayer.replay(original, config="candidate", save=True))
    await sim.wait_for_async(lambda s: s["in_flight"] == 1)
    pending = await fetch("SELECT conversation FROM message WHERE status = 'pending'")
    assert len(pending) == 1
    saved = pending[0]["conversation"]

    loop = asyncio.get_running_loop()
    started = loop.time()
    await chat.delete_conversation(owner, saved)
    with pytest.raises(ConversationGoneError):
        await asyncio.wait_for(replaying, scaled(30))
    # Aborted, not generated to its end (20 s) and then refused.
    assert loop.time() - started < 10
    await sim.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    assert await fetch("SELECT id FROM message WHERE conversation = {}", saved) == []
