"""The evaluation flow under Prefect's test harness, against PostgreSQL and simulators.

In-process: the sample dataset over two configurations with a judge, the report stored with
the run and published as artifacts, progress in the UI; a bad dataset stops before
anything runs. As a real process: ``switchboard flows run evaluate`` killed mid-run and
resumed with the same run id (the simulator counts every request), and a dataset built
from seeded history by ``switchboard datasets from-history``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.states import State

from flows.evaluate import EvaluationFailedError, EvaluationReport, evaluate
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate
from functions.core.evals import service
from functions.core.evals.datasets import load_dataset
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.llm.errors import ModelNotServedError
from tests.core.evals.judge_upstream import JUDGE_MODEL, JudgeUpstream
from tests.flows.conftest import flow_state, prefect_env, run_flow
from tests.support.process import REPO_ROOT, kill_group, start_async
from tests.support.simulator import SimulatorProcess, running_simulator

SAMPLE = REPO_ROOT / "flows" / "datasets" / "sample.jsonl"
JUDGE = json.dumps(
    {"type": "judge", "config": "grader", "rubric": "Is the answer right and brief?"}
)


@pytest.fixture(scope="module")
def eval_sim() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", "sim-model", "--tokens", "8") as sim:
        yield sim


@pytest.fixture
async def judge() -> AsyncIterator[JudgeUpstream]:
    async with JudgeUpstream() as server:
        yield server


async def create_configs(*names: str, **fields: Any) -> None:
    for name in names:
        spec = {"name": name, "model": "sim-model", **fields}
        await configs.create_config(msgspec.convert(spec, LLMConfigCreate))


async def test_the_sample_over_two_configs_with_a_judge_is_reported_and_published(
    flows_db: str,
    flow_env: Callable[..., None],
    eval_sim: SimulatorProcess,
    judge: JudgeUpstream,
) -> None:
    await create_configs("alpha", temperature=0.0)
    await create_configs("beta", temperature=0.8, system_prompt="Answer briefly.")
    await configs.create_config(
        msgspec.convert({"name": "grader", "model": JUDGE_MODEL}, LLMConfigCreate)
    )
    flow_env(database_url=flows_db, llm_urls=f"{eval_sim.base_url},{judge.base_url}")
    eval_sim.reset()
    items = len(load_dataset(SAMPLE).items)

    ran = await run_flow(
        evaluate,
        dataset=str(SAMPLE),
        config=["alpha", "beta"],
        scorer=[JUDGE, "similarity"],
        concurrency=8,
    )

    report: EvaluationReport = ran.result
    assert (report.counts.total, report.counts.sent, report.counts.errors) == (
        2 * items,
        2 * items,
        0,
    )
    assert [c.config for c in report.report.configs] == ["alpha@1", "beta@1"]
    assert (await eval_sim.stats_async())["paths"]["/v1/chat/completions"] == 2 * items
    assert len(judge.prompts) == 2 * items
    alpha = report.report.configs[0]
    names = {s.name for s in alpha.scorers}
    assert {"judge", "similarity", "exact_match", "contains", "numeric", "json_schema"} <= names
    assert all(s.mean is not None for s in alpha.scorers)
    (comparison,) = report.report.comparisons
    assert comparison.items == items
    lines = report.summary()
    assert lines[0].startswith(f"started run {report.run_id}: sent {2 * items} of {2 * items}")
    assert any("beta@1 vs alpha@1" in line or "beta@1 is" in line for line in lines)

    # Stored with the run, as `switchboard evals show` reads it back.
    run = await service.get_run(uuid.UUID(report.run_id))
    assert (run.status, run.results, run.runner) == ("complete", 2 * items, None)
    assert run.report is not None
    assert run.report["comparisons"][0]["candidate"] == "beta@1"

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[ran.flow_run_id])
            )
        )
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert {"markdown", "table", "progress"} <= set(by_type)
    assert "beta@1 vs alpha@1" in str(by_type["markdown"].data)
    assert float(by_type["progress"].data) == 100.0  # type: ignore[arg-type]


async def test_a_bad_dataset_stops_the_flow_before_anything_runs(
    flows_db: str, eval_sim: SimulatorProcess, tmp_path: Path
) -> None:
    from tests.flows.conftest import prefect_api_url

    await create_configs("alpha")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "ok"}\n{"id": "b", "promt": "typo"}\n', encoding="utf-8")
    eval_sim.reset()
    env = cli_env(
        flows_db,
        tmp_path,
        SWITCHBOARD_LLM_URLS=eval_sim.base_url,
        PREFECT_API_URL=prefect_api_url(),
    )
    code, _, err = await cli(
        "flows", "run", "evaluate", "--dataset", str(bad), "--config", "alpha", env=env
    )
    assert code == 2  # a usage error, found before Prefect starts
    assert "1 problem(s), nothing was run" in err
    assert "line 2: Object contains unknown field `promt`" in err
    assert (await service.list_runs()).data == []
    assert "/v1/chat/completions" not in (await eval_sim.stats_async())["paths"]


async def test_a_model_nobody_serves_fails_the_flow_at_once_naming_the_served_ones(
    flows_db: str, flow_env: Callable[..., None], eval_sim: SimulatorProcess
) -> None:
    await create_configs("alpha")
    await create_configs("typo", model="llama-3-8b")
    flow_env(database_url=flows_db, llm_urls=eval_sim.base_url)
    eval_sim.reset()
    state = await failed_state(evaluate, dataset=str(SAMPLE), config=["alpha", "typo"])
    with pytest.raises(ModelNotServedError, match=r"typo@1 \(model 'llama-3-8b'\).*sim-model"):
        await state.result()
    async with get_client() as client:
        (prepared,) = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="prepare-run")),
        )
    assert prepared.run_count == 1  # a refusal is not retried: it would only come later
    assert (await service.list_runs()).data == []
    assert "/v1/chat/completions" not in (await eval_sim.stats_async())["paths"]


async def test_retry_failed_sends_again_only_the_items_whose_attempt_failed(
    flows_db: str, flow_env: Callable[..., None], eval_sim: SimulatorProcess, tmp_path: Path
) -> None:
    await create_configs("alpha")
    data = tmp_path / "three.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(3)),
        encoding="utf-8",
    )
    flow_env(database_url=flows_db, llm_urls=eval_sim.base_url)
    eval_sim.reset()
    run_id = uuid.uuid4()
    eval_sim.set_healthy(False)  # every attempt fails: chat 500, /health 503
    try:
        await failing_run(evaluate, dataset=str(data), config=["alpha"], run_id=str(run_id))
    finally:
        eval_sim.set_healthy(True)
    assert (await eval_sim.stats_async())["paths"]["/v1/chat/completions"] >= 3
    assert len(await service.results_of(run_id)) == 3

    # Resuming alone sends nothing: every item has a result, a failed one; still failed.
    eval_sim.reset()
    await failing_run(evaluate, dataset=str(data), config=["alpha"], run_id=str(run_id))
    assert "/v1/chat/completions" not in (await eval_sim.stats_async())["paths"]

    # Retrying the failed ones sends exactly those, once each, and they now succeed.
    retried: EvaluationReport = (
        await run_flow(
            evaluate, dataset=str(data), config=["alpha"], run_id=str(run_id), retry_failed=True
        )
    ).result
    assert (retried.counts.sent, retried.counts.errors) == (3, 0)
    assert (await eval_sim.stats_async())["paths"]["/v1/chat/completions"] == 3
    results = await service.results_of(run_id)
    assert sorted(result.item_id for result in results) == ["q0", "q1", "q2"]
    assert all(result.error_code is None and result.output for result in results)
    assert (await service.get_run(run_id)).status == "complete"


async def failed_state(flow: Any, **parameters: Any) -> State[Any]:
    """Run ``flow`` once here, which must fail: its final state."""
    state = await flow_state(flow, **parameters)
    assert state.is_failed(), state
    return state


async def failing_run(flow: Any, **parameters: Any) -> None:
    """Run the evaluation flow, which must fail because a configuration answered no item:
    the run is stored ``failed``, with its report and the reason."""
    state = await failed_state(flow, **parameters)
    with pytest.raises(EvaluationFailedError) as failed:
        await state.result()
    run_id = uuid.UUID(failed.value.details["run_id"])
    assert "no successful item for alpha@1 (3 error(s): " in failed.value.message
    assert f"switchboard evals show {run_id}" in failed.value.message
    run = await service.get_run(run_id)
    assert (run.status, run.runner, run.finished_at) == ("failed", None, None)
    assert run.error is not None
    assert run.error.startswith("no successful item for alpha@1")
    assert run.report is not None
    assert run.report["status"] == "failed"


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``switchboard ARGS`` in a process of its own."""
    process = await start_async(
        sys.executable,
        "-m",
        "functions.cli",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    finally:
        kill_group(process.pid)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def cli_env(database_url: str, home: Path, **extra: str) -> dict[str, str]:
    return prefect_env(home, SWITCHBOARD_DATABASE_URL=database_url, **extra)


async def test_runs_are_listed_shown_and_compared_from_the_command_line(
    flows_db: str, flow_env: Callable[..., None], eval_sim: SimulatorProcess, tmp_path: Path
) -> None:
    await create_configs("alpha", temperature=0.0)
    await create_configs("beta", temperature=0.7)
    flow_env(database_url=flows_db, llm_urls=eval_sim.base_url)
    first = (
        await run_flow(evaluate, dataset=str(SAMPLE), config=["alpha"], name="baseline")
    ).result
    second = (await run_flow(evaluate, dataset=str(SAMPLE), config=["beta"])).result
    env = cli_env(flows_db, tmp_path)

    code, out, err = await cli("evals", "list", env=env)
    assert code == 0, err
    assert out.splitlines()[0].startswith("RUN")
    assert out.index(second.run_id) < out.index(first.run_id)  # newest first
    assert "complete" in out
    assert "33/33" in out

    code, out, err = await cli(
        "evals", "show", first.run_id[:8], "--compare", second.run_id, env=env
    )
    assert code == 0, err
    assert f"run {first.run_id}" in out
    assert "alpha@1: 33/33 completed" in out
    assert f"beta@1 (run {second.run_id[:8]}) vs alpha@1 (run {first.run_id[:8]})" in out
    assert "p=" in out

    code, out, err = await cli("evals", "show", first.run_id, "--json", env=env)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["report"]["configs"][0]["config"] == "alpha@1"
    assert shown["report"]["configs"][0]["items"] == 33

    code, out, err = await cli("evals", "show", "ffffffff", env=env)
    assert code == 1
    assert "no run starts with 'ffffffff'" in err


async def test_a_dataset_from_seeded_history_runs_against_a_candidate(
    flows_db: str, flow_env: Callable[..., None], eval_sim: SimulatorProcess, tmp_path: Path
) -> None:
    from functions.core.chat.schemas import SendRequest
    from functions.core.chat.service import ChatService
    from functions.core.conversations import service as conversations
    from functions.core.conversations.schemas import ConversationCreate
    from functions.core.keys import service as keys
    from functions.core.keys.schemas import ApiKeyCreate
    from functions.core.llm.client import LLMClient
    from functions.core.messages.schemas import Turn
    from tests.core.llm.conftest import llm_settings

    await create_configs("prod")
    await create_configs("candidate", temperature=1.0, system_prompt="Be terse.")
    owner = (await keys.create_key(ApiKeyCreate(name="support-app"))).id
    async with LLMClient.from_settings(llm_settings(eval_sim.base_url)) as client:
        chat = ChatService(client)
        for topic in ("서울 날씨 🌊", "refund policy", "reset my password"):
            conversation = await conversations.create_conversation(
                owner, ConversationCreate(config="prod")
            )
            for text in (f"Hi, about {topic}", "And then?"):
                await chat.send(
                    SendRequest(
                        access=UNRESTRICTED,
                        owner=owner,
                        conversation_id=conversation.id,
                        turns=[Turn(role="user", content=text)],
                    )
                )
    env = cli_env(flows_db, tmp_path)
    out_file = tmp_path / "history.jsonl"
    code, _, err = await cli(
        "datasets", "from-history", "--owner", "support-app", "--config", "prod",
        "--since", "2020-01-01", "--limit", "5", "--out", str(out_file), env=env,
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote 5 item(s) to {out_file}" in err
    data = load_dataset(out_file)
    assert len(data.items) == 5
    assert data.items[1].messages is not None
    assert len(data.items[1].messages) == 3  # the first exchange, then the second question

    flow_env(database_url=flows_db, llm_urls=eval_sim.base_url)
    ran = await run_flow(
        evaluate,
        dataset=str(out_file),
        config=["prod", "candidate"],
        scorer=["exact_match", "similarity"],
    )
    report: EvaluationReport = ran.result
    prod, candidate = report.report.configs
    # prod answers as it answered then (the simulator is deterministic): every item matches.
    exact = next(s for s in prod.scorers if s.name == "exact_match")
    assert exact.pass_rate is not None
    assert (exact.n, exact.pass_rate.value) == (5, 1.0)
    assert candidate.config == "candidate@1"

    code, _, err = await cli(
        "datasets", "from-history", "--owner", "nobody", "--out", str(out_file), env=env
    )
    assert code == 1
    assert "no active key named 'nobody'" in err


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    # About 200 ms a reply: the kill lands with items in flight.
    with running_simulator("--model", "sim-model", "--tokens", "8", "--itl-ms", "25") as sim:
        yield sim


async def test_flows_run_evaluate_killed_mid_run_resumes_with_the_same_run_id(
    flows_db: str, slow_sim: SimulatorProcess, tmp_path: Path
) -> None:
    from tests.flows.conftest import prefect_api_url

    await create_configs("alpha")
    await create_configs("beta", temperature=0.5)
    items = 30
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i:02}", "prompt": f"question {i} 🙂", "expected": "x"}) + "\n"
            for i in range(items)
        ),
        encoding="utf-8",
    )
    run_id = str(uuid.uuid4())
    env = cli_env(
        flows_db,
        tmp_path,
        SWITCHBOARD_LLM_URLS=slow_sim.base_url,
        PREFECT_API_URL=prefect_api_url(),
    )
    command = [
        "flows", "run", "evaluate", "--dataset", str(path), "--config", "alpha",
        "--config", "beta", "--scorer", "similarity", "--run-id", run_id, "--concurrency", "4",
    ]  # fmt: skip
    slow_sim.reset()
    process = await start_async(
        sys.executable, "-m", "functions.cli", *command, cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(3000):
            try:
                if len(await service.done_pairs(uuid.UUID(run_id))) >= 12:
                    break
            except Exception:  # the run is not created yet
                pass
            assert process.returncode is None, "the flow ended before it could be killed"
            await asyncio.sleep(0.02)
        process.kill()  # SIGKILL: nothing is cleaned up
        await process.wait()
    finally:
        kill_group(process.pid)
        await process.wait()

    recorded = await service.done_pairs(uuid.UUID(run_id))
    assert 12 <= len(recorded) < 2 * items
    await slow_sim.wait_for_async(lambda s: s["in_flight"] == 0)
    sent_first = (await slow_sim.stats_async())["paths"]["/v1/chat/completions"]
    assert sent_first - len(recorded) <= 4  # only what was in flight
    slow_sim.reset()

    code, out, err = await cli(*command, env=env)
    assert code == 0, err
    # Exactly the pairs without a result were sent, each once.
    assert (await slow_sim.stats_async())["paths"]["/v1/chat/completions"] == 2 * items - len(
        recorded
    )
    assert out.splitlines()[0].startswith(
        f"resumed run {run_id}: sent {2 * items - len(recorded)} of {2 * items} "
        f"(already done {len(recorded)}), 0 error(s)"
    )
    assert "beta@1 vs alpha@1" in out
    assert "similarity" in out
    results = await service.results_of(uuid.UUID(run_id))
    assert sorted((r.item_id, r.config) for r in results) == sorted(
        (f"q{i:02}", c) for i in range(items) for c in ("alpha@1", "beta@1")
    )
    run = await service.get_run(uuid.UUID(run_id))
    assert (run.status, run.runner) == ("complete", None)
