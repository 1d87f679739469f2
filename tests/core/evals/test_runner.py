"""Runs against PostgreSQL and the simulators: two configurations with every scorer and a
judge, upstream failures on some items, resume, and a run claimed by one process at a time."""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine
from rapidfuzz import fuzz

from functions.core.chat.service import ChatService
from functions.core.db.sql import fetch
from functions.core.errors import ConflictError
from functions.core.evals import service
from functions.core.evals.datasets import DatasetError, load_dataset
from functions.core.evals.report import build_report
from functions.core.evals.runner import Evaluator, RunOptions, start_run
from functions.core.evals.schemas import EvalResultOut, ScorerSpec
from functions.core.liveness.service import Lease
from functions.core.llm.errors import ModelNotServedError
from tests.core.evals.conftest import BodyFaults, MakeChat, make_config, write_jsonl
from tests.core.evals.judge_upstream import JUDGE_MODEL, JudgeUpstream, expected_judge_score
from tests.support.simulator import SimulatorProcess

PROMPTS = [
    "Name a colour of the sea.",
    "안녕하세요! 오늘 날씨 어때요?",
    "Say something with an emoji 🚀",
    "What does the gateway do?",
    "Count to three.",
    "Tell me about Seoul and 서울.",
]
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


def scorers(**extra: Any) -> list[ScorerSpec]:
    specs = [
        {"type": "exact_match", "ignore_case": True},
        {"type": "contains", "value": "the"},
        {"type": "regex", "pattern": r"\w+ \w+"},
        {"type": "json_valid"},
        {"type": "json_schema", "schema": {"type": "object"}},
        {"type": "similarity", "threshold": 0.5},
        {"type": "python", "callable": "tests.core.evals.scoring_helpers.has_words"},
        {"type": "judge", "config": "grader", "rubric": "Does it match the reference?"},
    ]
    return msgspec.convert(specs, list[ScorerSpec])


async def run_once(
    make_chat: MakeChat,
    chat: ChatService,
    path: Path,
    configs: list[str],
    specs: list[ScorerSpec],
    *,
    run_id: uuid.UUID | None = None,
    **options: Any,
) -> tuple[uuid.UUID, list[EvalResultOut]]:
    dataset = load_dataset(path)
    owner = await service.evaluation_owner()
    run = await start_run(
        dataset,
        llm=make_chat.llm(chat),
        configs_named=configs,
        scorers=specs,
        options=RunOptions(**{**FAST, **options}),
        owner=owner,
        run_id=run_id,
    )
    await Evaluator(chat, run, dataset).evaluate()
    return run.id, await service.results_of(run.id)


def normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def independent_verdicts(output: str, expected: Any) -> dict[str, tuple[float | None, bool | None]]:
    """What each scorer must say, computed here without the scorers' code."""
    expected_text = str(expected)
    try:
        json.loads(output)
        is_json = True
    except ValueError:
        is_json = False
    number = re.search(r"[-+]?\d+(?:\.\d+)?", output)
    similarity = fuzz.ratio(output, expected_text) / 100
    judged = expected_judge_score(expected_text, output)
    return {
        "exact_match": (None, normalized(output) == normalized(expected_text)),
        "contains": (None, "the" in output),
        "regex": (None, re.search(r"\w+ \w+", output) is not None),
        "json_valid": (None, is_json),
        "json_schema": (None, is_json and isinstance(json.loads(output), dict)),
        "numeric": (None, number is not None and abs(float(number[0]) - float(expected)) <= 0.5)
        if isinstance(expected, int | float)
        else (None, None),
        "similarity": (similarity, similarity >= 0.5),
        "python": (None, len(output.split()) >= 3),
        "judge": (
            None if judged is None else (judged - 1) / 4,
            None if judged is None else judged >= 3,
        ),
    }


async def test_two_configs_every_scorer_and_a_judge(
    pg: Engine[Any],
    sim: SimulatorProcess,
    judge: JudgeUpstream,
    make_chat: MakeChat,
    tmp_path: Path,
) -> None:
    await make_config("alpha", temperature=0.0, system_prompt="Be brief.")
    await make_config("beta", temperature=0.9, system_prompt="Be thorough. 🙂")
    await make_config("grader", model=JUDGE_MODEL, temperature=0.0)
    chat = make_chat(sim.base_url, judge.base_url)

    # The simulator is deterministic: a first run (no scorers) shows what each config says.
    probe = write_jsonl(
        tmp_path / "probe.jsonl", [{"id": f"i{n}", "prompt": p} for n, p in enumerate(PROMPTS)]
    )
    _, probed = await run_once(make_chat, chat, probe, ["alpha", "beta"], [])
    said = {(r.item_id, r.config): r.output for r in probed}
    assert len(said) == 12
    assert all(said.values())

    # Expectations that some outputs meet and others miss, including the judge's.
    expected: dict[str, Any] = {
        "i0": said[("i0", "alpha@1")].upper(),  # exact match ignoring case: alpha only
        "i1": said[("i1", "beta@1")],  # exact for beta
        "i2": said[("i2", "alpha@1")].split()[0],  # the judge finds it in alpha's answer
        "i3": 42,  # numeric (no number in word salad), and "42" for text scorers
        "i4": said[("i4", "alpha@1")][:-3] + "NOSCORE",  # similar to alpha's; no judge score
        "i5": "서울",
    }
    items = [
        {"id": f"i{n}", "prompt": p, "expected": expected[f"i{n}"]} for n, p in enumerate(PROMPTS)
    ]
    # An item's own scorer replaces the run's of the same name; NOSCORE makes the judge fail.
    items[4]["scorers"] = [{"type": "contains", "value": "NOSCORE", "name": "contains"}]
    items[3]["scorers"] = [{"type": "numeric", "tolerance": 0.5}]
    path = write_jsonl(tmp_path / "data.jsonl", items)
    faults_before = len(judge.prompts)
    run_id, results = await run_once(
        make_chat, chat, path, ["alpha", "beta@1"], scorers(), concurrency=4
    )

    assert len(results) == 12
    assert {(r.item_id, r.config) for r in results} == set(said)
    for result in results:
        assert result.output == said[(result.item_id, result.config)]  # same as the probe
        assert result.error_code is None
        assert result.finish_reason in ("stop", "length")
        assert result.latency_ms is not None
        assert result.latency_ms > 0
        assert result.ttft_ms is not None
        assert result.ttft_ms <= result.latency_ms
        assert result.prompt_tokens
        assert result.completion_tokens
        assert result.message_id is not None
        want = independent_verdicts(result.output, expected[result.item_id])
        by_name = {score.name: score for score in result.scores}
        run_names = [n for n in want if n != "numeric"]
        if result.item_id == "i4":  # the item's own contains comes after the run's scorers
            assert list(by_name) == [n for n in run_names if n != "contains"] + ["contains"]
        elif result.item_id == "i3":
            assert list(by_name) == [*run_names, "numeric"]
        else:
            assert list(by_name) == run_names
        for name, (score, passed) in want.items():
            if name not in by_name:
                continue
            got = by_name[name]
            if name == "contains" and result.item_id == "i4":
                assert got.passed is False  # the item's own contains: "NOSCORE" is not said
                continue
            if name == "judge" and passed is None:
                assert got.error is not None
                assert "no 'Score: N'" in got.error
                continue
            assert got.passed is passed, (result.item_id, result.config, name, result.output)
            if score is not None:
                assert got.score == pytest.approx(score, abs=1e-6)
    verdicts = {(r.item_id, r.config): {s.name: s.passed for s in r.scores} for r in results}
    assert verdicts[("i0", "alpha@1")]["exact_match"] is True
    assert verdicts[("i0", "beta@1")]["exact_match"] is False
    assert verdicts[("i1", "beta@1")]["exact_match"] is True
    assert verdicts[("i2", "alpha@1")]["judge"] is True
    assert len(judge.prompts) - faults_before == 12  # one judgement per item and config

    run = await service.get_run(run_id)
    report = build_report(run, results)
    assert [c.config for c in report.configs] == ["alpha@1", "beta@1"]
    alpha = report.configs[0]
    exact = next(s for s in alpha.scorers if s.name == "exact_match")
    assert (exact.n, exact.pass_rate and exact.pass_rate.value) == (6, pytest.approx(1 / 6))
    judge_summary = next(s for s in alpha.scorers if s.name == "judge")
    assert (judge_summary.n, judge_summary.errors) == (5, 1)
    (comparison,) = report.comparisons
    assert (comparison.baseline, comparison.candidate, comparison.items) == ("alpha@1", "beta@1", 6)
    assert comparison.overall == "no significant difference"  # six items prove nothing
    exact_cmp = next(s for s in comparison.scorers if s.name == "exact_match")
    assert (exact_cmp.fixed_items, exact_cmp.broken_items) == (["i1"], ["i0"])
    assert "beta@1 vs alpha@1" in report.markdown()


async def test_upstream_failures_are_retried_or_recorded_item_by_item(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, faults: BodyFaults, tmp_path: Path
) -> None:
    await make_config("alpha")
    chat = make_chat(sim.base_url, llm_eject_after_failures=1000)
    faults.add("ALWAYS-500", {"X-Sim-Fault": "500"})
    faults.add("ONCE-503", {"X-Sim-Fault": "503"}, times=1)
    faults.add("HANGS", {"X-Sim-Fault": "hang"})
    names = ["ok-1", "ALWAYS-500", "ONCE-503", "HANGS", "ok-2"]
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"id": n, "prompt": f"item {n}", "expected": "x"} for n in names],
    )
    specs = msgspec.convert([{"type": "regex", "pattern": "."}], list[ScorerSpec])
    run_id, results = await run_once(
        make_chat, chat, path, ["alpha"], specs, retries=2, item_timeout_s=0.5, concurrency=5
    )
    by_item = {r.item_id: r for r in results}
    assert len(results) == 5
    assert (by_item["ok-1"].error_code, by_item["ok-1"].attempts) == (None, 1)
    assert (by_item["ALWAYS-500"].error_code, by_item["ALWAYS-500"].attempts) == ("llm_error", 3)
    assert by_item["ALWAYS-500"].scores == []
    assert faults.sent_with("ALWAYS-500") == 3
    assert (by_item["ONCE-503"].error_code, by_item["ONCE-503"].attempts) == (None, 2)
    assert faults.sent_with("ONCE-503") == 2
    assert (by_item["HANGS"].error_code, by_item["HANGS"].attempts) == ("item_timeout", 3)
    assert by_item["HANGS"].message_id is None
    # Every attempt's reply is stored, and none stays pending.
    rows = await fetch(
        "SELECT status, count(*) AS n FROM message WHERE role = 'assistant' GROUP BY status"
    )
    assert {row["status"]: row["n"] for row in rows} == {"complete": 3, "failed": 4, "cancelled": 3}

    # Errors count as failures in the report, never as missing data.
    run = await service.get_run(run_id)
    report = build_report(run, results)
    (summary,) = report.configs
    assert (summary.errors, summary.error_codes) == (2, {"item_timeout": 1, "llm_error": 1})
    anything = summary.scorers[0]  # any output passes; a failed item does not
    assert anything.n == 5
    assert anything.pass_rate is not None
    assert anything.pass_rate.value == pytest.approx(3 / 5)


async def test_a_non_transient_failure_is_not_retried(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, faults: BodyFaults, tmp_path: Path
) -> None:
    # max_tokens above the model's context: vLLM answers 400 (context_length_exceeded).
    await make_config("huge", max_tokens=100_000)
    chat = make_chat(sim.base_url)
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "hello"}])
    _, (result,) = await run_once(make_chat, chat, path, ["huge"], [], retries=3)
    assert result.error_code == "context_length_exceeded"
    assert result.attempts == 1
    assert faults.sent_with("hello") == 1


async def test_resume_sends_only_the_items_without_a_result(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    await make_config("alpha")
    await make_config("beta")
    chat = make_chat(sim.base_url)
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"id": f"n{i}", "prompt": f"question {i}"} for i in range(20)]
    )
    dataset = load_dataset(path)
    owner = await service.evaluation_owner()
    run = await start_run(
        dataset,
        llm=make_chat.llm(chat),
        configs_named=["alpha", "beta"],
        scorers=[],
        options=RunOptions(concurrency=3),
        owner=owner,
    )

    class StopRunError(Exception):
        pass

    def stop_after_seven(result: EvalResultOut, done: int, total: int) -> None:
        if done == 7:
            raise StopRunError

    with pytest.raises(ExceptionGroup) as stopped:
        await Evaluator(chat, run, dataset, on_result=stop_after_seven).evaluate()
    assert stopped.group_contains(StopRunError)
    recorded = await service.done_pairs(run.id)
    assert 7 <= len(recorded) < 40
    sent_before = (await sim.stats_async())["paths"]["/v1/chat/completions"]

    await sim.wait_for_async(lambda s: s["in_flight"] == 0)
    sim.reset()
    counts = await Evaluator(chat, await service.get_run(run.id), dataset).evaluate()
    stats = await sim.stats_async()
    assert counts.already_done == len(recorded)
    assert counts.sent == 40 - len(recorded)
    assert stats["paths"]["/v1/chat/completions"] == 40 - len(recorded)
    assert sent_before - len(recorded) <= 3  # only what was in flight at the stop is sent again
    results = await service.results_of(run.id)
    assert sorted((r.item_id, r.config) for r in results) == sorted(
        (f"n{i}", c) for i in range(20) for c in ("alpha@1", "beta@1")
    )

    # A third pass has nothing left to send.
    sim.reset()
    again = await Evaluator(chat, await service.get_run(run.id), dataset).evaluate()
    assert (again.sent, again.already_done) == (0, 40)
    assert "/v1/chat/completions" not in (await sim.stats_async())["paths"]


async def test_a_resumed_run_keeps_its_dataset_and_configurations(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    await make_config("alpha")
    llm = make_chat.llm(make_chat(sim.base_url))
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "hi"}])
    owner = await service.evaluation_owner()
    run = await start_run(
        load_dataset(path),
        llm=llm,
        configs_named=["alpha"],
        scorers=[],
        options=RunOptions(),
        owner=owner,
    )
    changed = write_jsonl(tmp_path / "e.jsonl", [{"id": "a", "prompt": "hello"}])
    with pytest.raises(ConflictError, match="another dataset"):
        await start_run(
            load_dataset(changed),
            llm=llm,
            configs_named=["alpha"],
            scorers=[],
            options=RunOptions(),
            owner=owner,
            run_id=run.id,
        )
    with pytest.raises(ConflictError, match="keeps its configurations"):
        await start_run(
            load_dataset(path),
            llm=llm,
            configs_named=["beta"],
            scorers=[],
            options=RunOptions(),
            owner=owner,
            run_id=run.id,
        )
    same = await start_run(
        load_dataset(path),
        llm=llm,
        configs_named=["alpha@1"],
        scorers=[],
        options=RunOptions(),
        owner=owner,
        run_id=run.id,
    )
    assert same.id == run.id


async def test_run_scorers_are_checked_against_every_item_first(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    await make_config("alpha")
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"id": "a", "prompt": "hi", "expected": "x"}, {"id": "b", "prompt": "hi"}],
    )
    specs = msgspec.convert(
        [{"type": "exact_match"}, {"type": "regex", "pattern": "["}], list[ScorerSpec]
    )
    with pytest.raises(DatasetError) as caught:
        await start_run(
            load_dataset(path),
            llm=make_chat.llm(make_chat(sim.base_url)),
            configs_named=["alpha"],
            scorers=specs,
            options=RunOptions(),
            owner=await service.evaluation_owner(),
        )
    assert [(e.line, e.field) for e in caught.value.errors] == [
        (0, "scorers[1].pattern"),
        (2, "expected"),
    ]
    assert (await service.list_runs()).data == []


async def test_one_process_runs_a_run_at_a_time(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    await make_config("alpha")
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "hi"}])
    run = await start_run(
        load_dataset(path),
        llm=make_chat.llm(make_chat(sim.base_url)),
        configs_named=["alpha"],
        scorers=[],
        options=RunOptions(),
        owner=await service.evaluation_owner(),
    )
    first, second = Lease(ttl_s=30), Lease(ttl_s=30)
    claimed = await service.claim_run(run.id, first)
    assert claimed.runner == first.instance_id
    with pytest.raises(ConflictError, match="being run by another process"):
        await service.claim_run(run.id, second)
    # The first runner's lease lapses (its process died elsewhere): the run is free.
    await fetch(
        "UPDATE process_lease SET expires_at = now() - interval '1 second' WHERE id = {}",
        first.instance_id,
    )
    assert (await service.claim_run(run.id, second)).runner == second.instance_id
    finished = await service.finish_run(run.id, "complete", report={"ok": True})
    assert (finished.status, finished.runner, finished.report) == ("complete", None, {"ok": True})
    assert finished.finished_at is not None


async def test_a_model_nobody_serves_stops_the_run_before_it_starts(
    pg: Engine[Any], sim: SimulatorProcess, make_chat: MakeChat, tmp_path: Path
) -> None:
    await make_config("alpha")
    await make_config("typo", model="llama-3-8b")
    chat = make_chat(sim.base_url)
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "hi"}])
    with pytest.raises(ModelNotServedError) as refused:
        await start_run(
            load_dataset(path),
            llm=make_chat.llm(chat),
            configs_named=["alpha", "typo"],
            scorers=[],
            options=RunOptions(),
            owner=await service.evaluation_owner(),
        )
    # The rule a send applies (and its code), naming what is wrong and what is served.
    assert refused.value.code == "model_not_served"
    assert "typo@1 (model 'llama-3-8b')" in refused.value.message
    assert "the models served are: sim-model" in refused.value.message
    assert "alpha@1" not in refused.value.message
    assert (await service.list_runs()).data == []
    assert "/v1/chat/completions" not in (await sim.stats_async())["paths"]
