"""What a report says when items failed: a pair where either side has no output never ran
on that side, so it is left out of the paired tests and counted, never scored as a tie;
a configuration that answered no item makes the run a failure, named."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from functions.core.evals.report import build_report, compare
from functions.core.evals.schemas import EvalResultOut, EvalRunOut, EvalTarget, ItemScore

A = EvalTarget(name="alpha", version=1, id=uuid.uuid4())
B = EvalTarget(name="beta", version=1, id=uuid.uuid4())


def result(target: EvalTarget, item: int, *, passed: bool | None) -> EvalResultOut:
    """``passed`` None: the item failed upstream (no output, no scores)."""
    failed = passed is None
    return EvalResultOut(
        item_id=f"q{item}",
        item_index=item,
        config=target.label,
        config_id=target.id,
        output="" if failed else "an answer",
        scores=[]
        if failed
        else [
            ItemScore(name="exact_match", type="exact_match", score=float(passed), passed=passed)
        ],
        error_code="model_not_served" if failed else None,
        error_message="no LLM upstream serves model 'x'" if failed else None,
        latency_ms=None if failed else 10.0,
    )


def run_of(items: int) -> EvalRunOut:
    now = datetime.now(UTC)
    return EvalRunOut(
        id=uuid.uuid4(),
        name="",
        dataset="d.jsonl",
        dataset_sha256="0" * 64,
        items=items,
        configs=[A, B],
        scorers=[],
        parameters={},
        status="running",
        owner=uuid.uuid4(),
        created_at=now,
        updated_at=now,
    )


def test_pairs_with_an_error_on_either_side_are_left_out_and_counted() -> None:
    # Both pass q0..q5; B fails q6..q9 upstream, A fails q10. Scored as 0, the failures
    # would make B "worse" on the pairs; they never ran on B, so they are left out.
    a = [result(A, i, passed=i != 10) for i in range(10)] + [result(A, 10, passed=None)]
    b = [result(B, i, passed=True if i < 6 else None) for i in range(11)]
    comparison = compare(A.label, a, B.label, b)
    assert (comparison.items, comparison.left_out) == (6, 5)
    (exact,) = comparison.scorers
    assert exact.test.n == 6
    assert (exact.fixed, exact.broken) == (0, 0)
    assert comparison.overall == "no significant difference"
    assert comparison.headline().endswith(
        "on 6 paired item(s); 5 pair(s) left out (an error on either side)"
    )


def test_a_configuration_that_answered_nothing_fails_the_run() -> None:
    a = [result(A, i, passed=i % 2 == 0) for i in range(8)]
    b = [result(B, i, passed=None) for i in range(8)]
    report = build_report(run_of(8), a + b)
    (comparison,) = report.comparisons
    # Not "no significant difference": nothing was compared.
    assert (comparison.items, comparison.left_out, comparison.overall) == (
        0,
        8,
        "not enough data",
    )
    assert "8 pair(s) left out" in comparison.headline()
    assert report.failure() == "no successful item for beta@1 (8 error(s): model_not_served 8)"
    failed = msgspec.structs.replace(report, status="failed")
    assert failed.summary()[1] == f"failed: {report.failure()}"
    assert "8 pair(s) left out" in report.markdown()

    healthy = build_report(run_of(8), a + [result(B, i, passed=True) for i in range(8)])
    assert healthy.failure() is None
    assert healthy.comparisons[0].left_out == 0
