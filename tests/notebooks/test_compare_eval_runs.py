"""``compare_eval_runs.ipynb`` top to bottom on two runs of one dataset: with no run named
it compares the two latest, and its numbers are the evaluation report's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from papermill.exceptions import PapermillExecutionError
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.evals import service
from functions.core.evals.datasets import load_dataset
from functions.core.evals.report import compare_runs
from functions.core.evals.runner import Evaluator, RunOptions, start_run
from functions.core.evals.schemas import EvalRunOut, ScorerSpec
from functions.core.llm.client import LLMClient
from tests.core.evals.conftest import write_jsonl
from tests.core.replay.conftest import make_config
from tests.notebooks.conftest import assert_clean_run, execute

PROMPTS = [
    "Name a colour of the sea.",
    "What does the gateway do?",
    "안녕하세요! 오늘 날씨 어때요?",
    "Say hello to the world 🌍",
    "Count to three.",
    "Tell me about Seoul and 서울.",
    "Which model answers quickly?",
    "Is the stream fast?",
]
SCORERS = [
    {"type": "contains", "value": "the"},
    {"type": "similarity", "threshold": 0.3, "method": "token_set_ratio"},
]


async def seed_runs(chat: ChatService, llm: LLMClient, tmp_path: Path) -> list[EvalRunOut]:
    await make_config("alpha", system_prompt="Be brief.")
    await make_config("beta", system_prompt="Be thorough.", temperature=0.9)
    lines = [
        {"id": f"q{i}", "prompt": prompt, "expected": f"the {prompt.lower()}"}
        for i, prompt in enumerate(PROMPTS, start=1)
    ]
    dataset = load_dataset(write_jsonl(tmp_path / "questions.jsonl", lines))
    owner = await service.evaluation_owner()
    runs = []
    for config in ("alpha", "beta"):
        run = await start_run(
            dataset,
            llm=llm,
            configs_named=[config],
            scorers=msgspec.convert(SCORERS, list[ScorerSpec]),
            options=RunOptions(concurrency=4),
            owner=owner,
            name=f"{config} on questions",
        )
        await Evaluator(chat, run, dataset).evaluate()
        runs.append(await service.finish_run(run.id, "complete"))
    return runs


async def test_the_two_latest_runs_compared(
    pg: Engine[Any],
    pg_url: str,
    chat: ChatService,
    llm: LLMClient,
    jupyter_home: Path,
    tmp_path: Path,
) -> None:
    a, b = await seed_runs(chat, llm, tmp_path)

    run = await execute("compare_eval_runs", tmp_path, jupyter_home, database_url=pg_url)

    assert_clean_run(run)
    values = run.values
    assert (values["run_a"], values["run_b"]) == (str(a.id), str(b.id))
    a_results, b_results = await service.results_of(a.id), await service.results_of(b.id)
    comparisons = compare_runs(a, a_results, b, b_results)
    assert values["comparisons"] == msgspec.to_builtins(comparisons)
    [comparison] = comparisons
    assert comparison.items == len(PROMPTS)
    assert [s.name for s in comparison.scorers] == ["contains", "similarity"]
    assert [(s["side"], s["config"]) for s in values["summaries"]] == [
        ("A", "alpha@1"),
        ("B", "beta@1"),
    ]
    summary_a = values["summaries"][0]
    assert summary_a["completed"] == len(PROMPTS)
    assert (
        summary_a["scorers"][0]["pass_rate"]["low"] <= summary_a["scorers"][0]["pass_rate"]["value"]
    )
    # Every item and scorer is compared; the verdicts that changed are the report's.
    assert values["items_compared"] == len(PROMPTS) * len(SCORERS)
    flipped = {(v["item"], v["scorer"], v["fixed"]) for v in values["changed_verdicts"]}
    assert flipped == {
        (item, s.name, fixed)
        for s in comparison.scorers
        for fixed, items in ((True, s.fixed_items), (False, s.broken_items))
        for item in items
    }
    assert len(run.data("image/png")) == 1


async def test_a_single_run_says_to_run_a_second_one_without_a_traceback(
    pg: Engine[Any], pg_url: str, llm: LLMClient, jupyter_home: Path, tmp_path: Path
) -> None:
    await make_config("alpha")
    dataset = load_dataset(write_jsonl(tmp_path / "one.jsonl", [{"id": "q", "prompt": "hi"}]))
    only = await start_run(
        dataset,
        llm=llm,
        configs_named=["alpha"],
        scorers=[],
        options=RunOptions(),
        owner=await service.evaluation_owner(),
    )

    with pytest.raises(PapermillExecutionError) as stopped:
        await execute("compare_eval_runs", tmp_path, jupyter_home, database_url=pg_url)

    said = f"only one evaluation run ({str(only.id)[:8]}): run a second evaluation first"
    assert said in stopped.value.evalue
    # The message alone: no frames, no "Traceback" for a user who did nothing wrong.
    assert [line for line in stopped.value.traceback if line.strip()] == [stopped.value.evalue]
