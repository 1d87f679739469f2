"""Every scorer on outputs whose verdicts are known, and the failures of scorers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from rapidfuzz import fuzz

from functions.core.evals.schemas import DatasetItem, ItemScore, ScorerSpec
from functions.core.evals.scorers import (
    check_spec,
    effective_scorers,
    judge_turns,
    parse_judge_score,
    run_scorer,
)


def spec(**fields: Any) -> ScorerSpec:
    return msgspec.convert(fields, ScorerSpec)  # type: ignore[arg-type]


def item(expected: Any = None, **fields: Any) -> DatasetItem:
    return DatasetItem(id="i1", prompt="What is 6 x 7?", expected=expected, **fields)


async def score(output: str, scorer: dict[str, Any], expected: Any = None) -> ItemScore:
    return await run_scorer(spec(**scorer), output, item(expected))


@pytest.mark.parametrize(
    ("output", "expected", "options", "passed"),
    [
        ("Paris", "Paris", {}, True),
        ("  Paris \n", "Paris", {}, True),
        ("paris", "Paris", {}, False),
        ("paris", "Paris", {"ignore_case": True}, True),
        ("Paris.", "Paris", {}, False),
        ("Paris.", "Paris", {"remove_punctuation": True}, True),
        ("New   York", "New York", {}, True),
        ("New   York", "New York", {"collapse_whitespace": False}, False),
        ("\uff30\uff21\uff32\uff29\uff33", "PARIS", {}, True),  # full-width letters, NFKC
        ("\uff30\uff21\uff32\uff29\uff33", "PARIS", {"unicode_normalize": False}, False),
        ("서울 🚀", "서울 🚀", {}, True),
        ("42", 42, {}, True),  # a number expected is compared as its text
    ],
)
async def test_exact_match_and_its_normalisation(
    output: str, expected: Any, options: dict[str, Any], passed: bool
) -> None:
    result = await score(output, {"type": "exact_match", **options}, expected)
    assert (result.passed, result.score, result.error) == (passed, float(passed), None)


async def test_exact_match_prefers_the_scorers_own_expected_value() -> None:
    result = await score("B", {"type": "exact_match", "expected": "B"}, expected="A")
    assert result.passed is True


@pytest.mark.parametrize(
    ("scorer", "passed"),
    [
        ({"value": "Seoul"}, True),
        ({"value": "seoul"}, False),
        ({"value": "seoul", "ignore_case": True}, True),
        ({"values": ["Tokyo", "Seoul"]}, True),
        ({"values": ["Tokyo", "Seoul"], "all": True}, False),
        ({"values": ["Seoul", "서울"], "all": True}, True),
    ],
)
async def test_contains(scorer: dict[str, Any], passed: bool) -> None:
    result = await score("The capital is Seoul (서울).", {"type": "contains", **scorer})
    assert result.passed is passed


@pytest.mark.parametrize(
    ("scorer", "passed"),
    [
        ({"pattern": r"\b42\b"}, True),
        ({"pattern": r"^42$"}, False),
        ({"pattern": r"^42$", "multiline": True}, True),
        ({"pattern": r"answer"}, False),
        ({"pattern": r"answer", "ignore_case": True}, True),
        ({"pattern": r"Answer.*42", "full_match": True}, False),
        ({"pattern": r"Answer.*42", "full_match": True, "dotall": True}, True),
    ],
)
async def test_regex(scorer: dict[str, Any], passed: bool) -> None:
    result = await score("Answer:\n42", {"type": "regex", **scorer})
    assert result.passed is passed


@pytest.mark.parametrize(
    ("output", "strict", "passed"),
    [
        ('{"a": 1}', False, True),
        ('  [1, 2, "🎉"]\n', True, True),
        ('Here it is:\n```json\n{"a": 1}\n```', False, True),
        ('Here it is:\n```json\n{"a": 1}\n```', True, False),
        ("{'a': 1}", False, False),
        ("", False, False),
    ],
)
async def test_valid_json(output: str, strict: bool, passed: bool) -> None:
    result = await score(output, {"type": "json_valid", "strict": strict})
    assert result.passed is passed
    assert (result.detail is None) is passed


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("output", "passed", "detail"),
    [
        ('{"city": "서울", "population": 9411000}', True, None),
        ('{"city": "Seoul"}', False, "(root): 'population' is a required property"),
        (
            '{"city": "Seoul", "population": -1}',
            False,
            "population: -1 is less than the minimum of 0",
        ),
        ("not json", False, "not JSON"),
    ],
)
async def test_json_schema(output: str, passed: bool, detail: str | None) -> None:
    result = await score(output, {"type": "json_schema", "schema": SCHEMA})
    assert result.passed is passed
    if detail is None:
        assert result.detail is None
    else:
        assert result.detail is not None
        assert result.detail.startswith(detail)


@pytest.mark.parametrize(
    ("output", "expected", "options", "passed"),
    [
        ("The answer is 42.", 42, {}, True),
        ("The answer is 42.5", 42, {}, False),
        ("The answer is 42.5", 42, {"tolerance": 0.5}, True),
        ("about 1,050 people", 1000, {"relative": 0.05}, True),
        ("about 1,051 people", 1000, {"relative": 0.05}, False),
        ("-3.5e2 degrees", "-350", {}, True),
        ("no number here", 42, {}, False),
    ],
)
async def test_numeric(output: str, expected: Any, options: dict[str, Any], passed: bool) -> None:
    result = await score(output, {"type": "numeric", **options}, expected)
    assert (result.passed, result.error) == (passed, None)


@pytest.mark.parametrize(
    "method", ["ratio", "partial_ratio", "token_sort_ratio", "token_set_ratio"]
)
async def test_similarity_is_rapidfuzz_over_100(method: str) -> None:
    output, expected = "the quick brown fox 🦊", "quick brown fox jumps"
    result = await score(
        output, {"type": "similarity", "method": method, "threshold": 0.6}, expected
    )
    want = getattr(fuzz, method)(output, expected) / 100
    assert result.score == pytest.approx(want, abs=1e-6)
    assert result.passed is (want >= 0.6)


async def test_similarity_can_ignore_case() -> None:
    plain = await score("HELLO WORLD", {"type": "similarity"}, "hello world")
    folded = await score("HELLO WORLD", {"type": "similarity", "ignore_case": True}, "hello world")
    assert (plain.passed, folded.score) == (False, 1.0)


JUDGE = {"type": "judge", "config": "grader@2", "rubric": "Is it right?"}


@pytest.mark.parametrize(
    ("reply", "scale", "score_", "passed"),
    [
        ("Fine.\nScore: 5", {}, 1.0, True),
        ("Score: 1", {}, 0.0, False),
        ("score = 3", {}, 0.5, True),  # the midpoint of 1..5 passes by default
        ("Score: 3", {"pass_at": 4}, 0.5, False),
        ("I said Score: 1 at first, but Score: **4**", {}, 0.75, True),
        ("Score: 7", {"scale_min": 0, "scale_max": 10}, 0.7, True),
    ],
)
def test_the_judges_score_is_parsed_and_normalised(
    reply: str, scale: dict[str, Any], score_: float, passed: bool
) -> None:
    result = parse_judge_score(spec(**JUDGE, **scale), reply)  # type: ignore[arg-type]
    assert (result.score, result.passed) == (pytest.approx(score_), passed)


@pytest.mark.parametrize("reply", ["No idea.", "Score: 9", "Score: 0"])
async def test_a_judge_reply_without_a_usable_score_is_an_error_for_the_item(reply: str) -> None:
    async def ask(config: str, turns: Any) -> str:
        assert config == "grader@2"
        return reply

    result = await run_scorer(spec(**JUDGE), "output", item("x"), ask)
    assert (result.score, result.passed) == (None, None)
    assert result.error is not None


def test_the_judge_sees_the_rubric_the_chat_the_reference_and_the_response() -> None:
    turns = judge_turns(spec(**JUDGE), "It is 42 🚀", item("42"))  # type: ignore[arg-type]
    assert len(turns) == 1
    text = turns[0].content
    assert "RUBRIC:\nIs it right?" in text
    assert "[user] What is 6 x 7?" in text
    assert "REFERENCE ANSWER:\n42\n\nRESPONSE:\nIt is 42 🚀" in text
    assert "'Score: N'" in text


HELPERS = "tests.core.evals.scoring_helpers"


@pytest.mark.parametrize(
    ("scorer", "score_", "passed", "detail"),
    [
        ({"callable": f"{HELPERS}.has_words"}, 1.0, True, None),
        ({"callable": f"{HELPERS}:has_words", "params": {"minimum": 10}}, 0.0, False, None),
        ({"callable": f"{HELPERS}.length_ratio", "params": {"longest": 40}}, 0.5, True, None),
        ({"callable": f"{HELPERS}.graded"}, 0.25, False, "20 characters"),
    ],
)
async def test_python_callables(
    scorer: dict[str, Any], score_: float, passed: bool, detail: str | None
) -> None:
    result = await score("one two three four 5", {"type": "python", **scorer})
    assert (result.score, result.passed, result.detail, result.error) == (
        score_,
        passed,
        detail,
        None,
    )


@pytest.mark.parametrize(
    ("scorer", "error"),
    [
        ({"type": "python", "callable": f"{HELPERS}.explodes"}, "RuntimeError: the scorer broke"),
        ({"type": "python", "callable": f"{HELPERS}.wrong_type"}, "returned str"),
        ({"type": "exact_match"}, "no expected value"),
        ({"type": "judge", "config": "g", "rubric": "r"}, "no judge can be asked"),
    ],
)
async def test_a_scorer_that_raises_records_an_error_not_a_crash(
    scorer: dict[str, Any], error: str
) -> None:
    result = await score("output", scorer)
    assert (result.score, result.passed) == (None, None)
    assert result.error is not None
    assert error in result.error


@pytest.mark.parametrize(
    ("scorer", "expected", "field", "message"),
    [
        ({"type": "regex", "pattern": "("}, None, "pattern", "not a regular expression"),
        ({"type": "json_schema", "schema": {"type": 5}}, None, "schema", "not a valid JSON Schema"),
        ({"type": "python", "callable": "no.such.module.f"}, None, "callable", "cannot import"),
        ({"type": "python", "callable": f"{HELPERS}.missing"}, None, "callable", "has no"),
        (
            {"type": "python", "callable": f"{HELPERS}.NOT_CALLABLE"},
            None,
            "callable",
            "not callable",
        ),
        ({"type": "contains"}, None, None, "give value or values"),
        ({"type": "exact_match"}, None, "expected", "needs an expected value"),
        ({"type": "numeric"}, "many", "expected", "not a number"),
        ({**JUDGE, "scale_min": 5, "scale_max": 5}, None, "scale_max", "greater"),
        ({**JUDGE, "config": "grader@x"}, None, "config", "positive integer"),
    ],
)
def test_definitions_are_checked_before_anything_runs(
    scorer: dict[str, Any], expected: Any, field: str | None, message: str
) -> None:
    problems = check_spec(spec(**scorer), expected)
    assert len(problems) == 1
    assert problems[0][0] == field
    assert message in problems[0][1]


def test_an_items_scorer_replaces_the_runs_of_the_same_name() -> None:
    run = [spec(type="exact_match"), spec(type="contains", value="x", name="has-x")]
    own = spec(type="exact_match", ignore_case=True)
    chosen = effective_scorers(run, item("a", scorers=[own]))
    assert chosen == [run[1], own]
