"""A run's life without Prefect (take up, end when stopped, conclude; all in one call), as a
notebook or any second caller lives it, against PostgreSQL and the simulator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.errors import ConflictError
from functions.core.evals import runner, service
from functions.core.evals.datasets import Dataset, load_dataset
from functions.core.evals.runner import RunOptions, start_run
from functions.core.evals.schemas import EvalResultOut, EvalRunOut
from functions.core.liveness.service import Lease
from tests.core.evals.conftest import MakeChat, make_config, write_jsonl
from tests.support.simulator import SimulatorProcess

ITEMS = [{"id": f"q{n}", "prompt": f"question {n}"} for n in range(3)]


async def new_run(
    sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path, *configs: str
) -> tuple[EvalRunOut, Dataset]:
    for name in configs:
        await make_config(name)
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", ITEMS))
    run = await start_run(
        dataset,
        llm=make_chat.llm(make_chat(sim.base_url)),
        configs_named=list(configs),
        scorers=[],
        options=RunOptions(backoff_s=0.01, backoff_max_s=0.05),
        owner=await service.evaluation_owner(),
    )
    return run, dataset


def failed_result(run: EvalRunOut, index: int, config: int = 0) -> EvalResultOut:
    target = run.configs[config]
    return EvalResultOut(
        item_id=ITEMS[index]["id"],
        item_index=index,
        config=target.label,
        config_id=target.id,
        output="",
        scores=[],
        error_code="llm_unavailable",
        error_message="upstream down",
        attempts=1,
        created_at=datetime.now(UTC),
    )


async def test_run_evaluation_is_the_whole_life_in_one_call(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    run, dataset = await new_run(sim, make_chat, tmp_path, "alpha", "beta")
    seen: list[tuple[int, int]] = []
    chat = make_chat(sim.base_url)

    done = await runner.run_evaluation(
        chat,
        Lease(ttl_s=30),
        run,
        dataset,
        on_result=lambda _, finished, total: seen.append((finished, total)),
    )

    assert not done.taken.resumed
    assert (done.counts.total, done.counts.sent, done.counts.errors) == (6, 6, 0)
    assert sorted(seen) == [(n, 6) for n in range(1, 7)]
    assert done.report.status == "complete"
    stored = await service.get_run(run.id)
    assert (stored.status, stored.runner, stored.results) == ("complete", None, 6)
    assert stored.finished_at is not None
    assert stored.report is not None
    assert stored.report["status"] == "complete"
    assert [c["config"] for c in stored.report["configs"]] == ["alpha@1", "beta@1"]


async def test_take_up_claims_and_with_retry_failed_forgets_failed_items(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    run, _ = await new_run(sim, make_chat, tmp_path, "alpha")
    await service.record_result(run.id, failed_result(run, 0))
    ok = msgspec.structs.replace(
        failed_result(run, 1), error_code=None, error_message=None, output="fine"
    )
    await service.record_result(run.id, ok)
    run = await service.get_run(run.id)
    mine, theirs = Lease(ttl_s=30), Lease(ttl_s=30)

    taken = await runner.take_up(run, mine, retry_failed=True)

    assert taken.resumed
    assert taken.forgotten == 1
    assert (taken.run.runner, taken.run.results) == (mine.instance_id, 1)
    assert await service.done_pairs(run.id) == {("q1", run.configs[0].id)}
    with pytest.raises(ConflictError, match="being run by another process"):
        await runner.take_up(taken.run, theirs)


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        (asyncio.CancelledError(), "interrupted"),
        (KeyboardInterrupt(), "interrupted"),
        (RuntimeError("the upstream caught fire"), "failed"),
    ],
)
async def test_a_run_stopped_while_sending_ends_and_lets_go(
    pg: Engine[Any],
    sim: SimulatorProcess,
    make_chat: MakeChat,
    tmp_path: Path,
    stop: BaseException,
    status: str,
) -> None:
    run, _ = await new_run(sim, make_chat, tmp_path, "alpha")
    lease = Lease(ttl_s=30)
    await runner.take_up(run, lease)

    with pytest.raises(type(stop)):
        async with runner.stopped_means_ended(run.id):
            raise stop

    ended = await service.get_run(run.id)
    assert (ended.status, ended.runner) == (status, None)
    assert ended.error == f"{type(stop).__name__}: {stop}"
    # Let go: another process takes it up at once, as a resume would.
    assert (await runner.take_up(ended, Lease(ttl_s=30))).run.status == "running"


async def test_conclude_says_how_the_run_ended(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    run, _ = await new_run(sim, make_chat, tmp_path, "alpha")
    await runner.take_up(run, Lease(ttl_s=30))
    await service.record_result(run.id, failed_result(run, 0))

    missing = await runner.conclude(run.id)
    assert missing.status == "interrupted"
    assert (await service.get_run(run.id)).status == "interrupted"

    for index in (1, 2):
        await service.record_result(run.id, failed_result(run, index))
    failed = await runner.conclude(run.id)
    assert failed.status == "failed"
    stored = await service.get_run(run.id)
    assert stored.status == "failed"
    assert stored.error == failed.failure()
    assert "no successful item for alpha@1" in (stored.error or "")
    assert stored.finished_at is None
