"""Resume, proven with a real process killed mid-run (``kill -9``), the simulator counting.

The first process records some results and dies with a few items in flight. The resumed
run sends exactly the items without a result, each once; an item with a result is never
sent again (its one conversation shows it), and every item ends with exactly one result.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.db.sql import fetch
from functions.core.evals import service
from functions.core.evals.datasets import load_dataset
from functions.core.evals.runner import Evaluator, RunOptions, start_run
from functions.core.liveness.service import Lease
from functions.core.llm.client import LLMClient
from tests.core.evals.conftest import make_config, write_jsonl
from tests.core.llm.conftest import llm_settings
from tests.support.process import REPO_ROOT, kill_group, start_async
from tests.support.simulator import SimulatorProcess, running_simulator
from tests.support.timing import scaled

ITEMS = 40
CONCURRENCY = 4


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    # About 200 ms a reply: the kill lands with items in flight.
    with running_simulator("--model", "sim-model", "--tokens", "8", "--itl-ms", "25") as sim:
        yield sim


async def test_a_killed_run_resumes_without_losing_or_repeating_an_item(
    pg: Engine[Any], pg_url: str, slow_sim: SimulatorProcess, tmp_path: Path
) -> None:
    await make_config("alpha")
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"id": f"item-{i:02}", "prompt": f"question {i} 🙂"} for i in range(ITEMS)],
    )
    dataset = load_dataset(path)
    settings = llm_settings(slow_sim.base_url, llm_max_retries=0)
    async with LLMClient.from_settings(settings) as client:
        run = await start_run(
            dataset,
            llm=client,
            configs_named=["alpha"],
            scorers=[],
            options=RunOptions(concurrency=CONCURRENCY),
            owner=await service.evaluation_owner(),
        )
    slow_sim.reset()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
        "SWITCHBOARD_DATABASE_URL": pg_url,
        "SWITCHBOARD_LLM_URLS": slow_sim.base_url,
        "SWITCHBOARD_LOG_FORMAT": "json",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with tempfile.TemporaryFile() as log:
        process = await start_async(
            sys.executable,
            "-m",
            "tests.core.evals.evaluate_process",
            str(run.id),
            str(path),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + scaled(60)
            while time.monotonic() < deadline:
                if len(await service.done_pairs(run.id)) >= 10 or process.returncode is not None:
                    break
                await asyncio.sleep(0.02)
            assert process.returncode is None, "the run ended before it could be killed"
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), scaled(10))
        finally:
            kill_group(process.pid)
            await process.wait()
        log.seek(0)
        output = log.read().decode("utf-8", "replace")

    recorded = {item for item, _ in await service.done_pairs(run.id)}
    assert 10 <= len(recorded) < ITEMS, output
    await slow_sim.wait_for_async(lambda s: s["in_flight"] == 0)
    sent_first = (await slow_sim.stats_async())["paths"]["/v1/chat/completions"]
    in_flight_at_kill = sent_first - len(recorded)
    assert 0 <= in_flight_at_kill <= CONCURRENCY

    # The dead process still names itself the runner; its pid is gone, so the run is free.
    assert (await service.get_run(run.id)).runner is not None
    slow_sim.reset()
    settings = llm_settings(slow_sim.base_url, llm_max_retries=0)
    async with LLMClient.from_settings(settings) as client:
        lease = Lease(ttl_s=10)
        resumed = await service.claim_run(run.id, lease)
        counts = await Evaluator(ChatService(client), resumed, dataset).evaluate()
        await lease.stop(release=True)

    assert counts.already_done == len(recorded)
    assert counts.sent == ITEMS - len(recorded)
    assert (await slow_sim.stats_async())["paths"]["/v1/chat/completions"] == ITEMS - len(recorded)
    results = await service.results_of(run.id)
    assert sorted(r.item_id for r in results) == [f"item-{i:02}" for i in range(ITEMS)]
    assert all(r.error_code is None for r in results)

    # Per item, the conversations the run's key holds: one for each item that had a result
    # before the kill (never sent again), at most two for the others (the one the kill cut,
    # and the resumed one).
    rows = await fetch("SELECT title FROM conversation WHERE owner_key = {}", run.owner)
    per_item: dict[str, int] = {}
    for row in rows:
        item = row["title"].rsplit(" ", 1)[1]
        per_item[item] = per_item.get(item, 0) + 1
    assert {item: per_item[item] for item in recorded} == dict.fromkeys(recorded, 1)
    assert all(1 <= per_item[f"item-{i:02}"] <= 2 for i in range(ITEMS))
    cut_by_the_kill = {item for item, n in per_item.items() if n == 2}
    # Claimed when the process died: sent to the model or about to be.
    assert in_flight_at_kill <= len(cut_by_the_kill) <= CONCURRENCY
