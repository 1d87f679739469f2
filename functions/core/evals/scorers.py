"""Scorers: how an output is judged, one verdict per scorer per item.

Each scorer gives a score from 0 to 1 and a pass/fail verdict (:class:`ItemScore`): exact
match, contains, regex, valid JSON, JSON Schema, numeric tolerance and the Python callable
are verdicts (1 or 0, unless the callable says otherwise); similarity and the judge are
graded and pass at a threshold. A scorer that raises records its error for that item and
the run goes on (:func:`score_output`).

Definitions are checked when a dataset is read (:func:`check_spec`): a bad regex, an
invalid JSON Schema or a callable that does not import is an error naming the line, before
anything is sent. rapidfuzz and jsonschema are imported by the scorers that use them only.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from functions.core.evals.schemas import (
    Contains,
    DatasetItem,
    ExactMatch,
    ItemScore,
    JsonSchema,
    Judge,
    Numeric,
    PythonScorer,
    Regex,
    ScorerSpec,
    Similarity,
    ValidJson,
    scorer_name,
)
from functions.core.messages.schemas import Turn

if TYPE_CHECKING:
    from collections.abc import Sequence

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(?P<body>.*?)\n?```", re.DOTALL)
_JUDGE_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(?P<score>[-+]?\d+(?:\.\d+)?)", re.IGNORECASE)
JUDGE_INSTRUCTIONS = (
    "You are grading an AI assistant's response. Read the rubric, the conversation, the "
    "reference answer (if any) and the response. Give one or two sentences of reasoning, then "
    "end with a line exactly of the form 'Score: N', N an integer from {low} to {high} "
    "({high} is best)."
)


class JudgeAsk(Protocol):
    """Ask a configuration (``name`` or ``name@version``) and return its reply's text."""

    def __call__(self, config: str, turns: list[Turn]) -> Awaitable[str]: ...


class ScorerError(Exception):
    """A scorer could not give a verdict; the message is recorded for the item."""


def expected_text(spec_expected: Any, item: DatasetItem) -> str:
    """The reference text: the scorer's own ``expected``, else the item's."""
    value = spec_expected if spec_expected is not None else item.expected
    if value is None:
        raise ScorerError("no expected value (give one on the item or the scorer)")
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return msgspec.json.encode(value).decode()
    return str(value)


def normalize(text: str, spec: ExactMatch) -> str:
    """``text`` as exact match compares it, by the spec's options."""
    if spec.unicode_normalize:
        text = unicodedata.normalize("NFKC", text)
    if spec.remove_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if spec.collapse_whitespace:
        text = " ".join(text.split())
    elif spec.strip:
        text = text.strip()
    if spec.ignore_case:
        text = text.casefold()
    return text


def parse_json_output(output: str, *, strict: bool) -> Any:
    """The JSON in ``output``: all of it, or (unless ``strict``) a fenced code block's."""
    try:
        return msgspec.json.decode(output.strip())
    except msgspec.DecodeError as exc:
        if not strict and (fenced := _FENCE.search(output)) is not None:
            try:
                return msgspec.json.decode(fenced["body"].strip())
            except msgspec.DecodeError as inner:
                raise ScorerError(f"not JSON: {inner}") from None
        raise ScorerError(f"not JSON: {exc}") from None


def first_number(text: str) -> float | None:
    found = _NUMBER.search(text)
    return None if found is None else float(found[0].replace(",", ""))


@lru_cache(maxsize=256)
def _regex(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _regex_flags(spec: Regex) -> int:
    flags = re.IGNORECASE if spec.ignore_case else 0
    flags |= re.MULTILINE if spec.multiline else 0
    return flags | (re.DOTALL if spec.dotall else 0)


def _validator(schema: Mapping[str, Any]) -> Any:
    import jsonschema  # type: ignore[import-untyped]

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@lru_cache(maxsize=256)
def _cached_validator(encoded: bytes) -> Any:
    return _validator(msgspec.json.decode(encoded))


def load_callable(path: str) -> Callable[..., Any]:
    """``package.module:function`` or ``package.module.function``, imported."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ScorerError(f"{path!r} is not a dotted path to a function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScorerError(f"cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ScorerError(f"{module_name!r} has no {attribute!r}")
    if not callable(target):
        raise ScorerError(f"{path!r} is not callable")
    fn: Callable[..., Any] = target
    return fn


def parse_judge_config(config: str) -> tuple[str, int | None]:
    """``name`` or ``name@version``."""
    name, sep, version = config.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ScorerError(f"{config!r}: a version after @ is a positive integer")
    return name, int(version)


def check_spec(spec: ScorerSpec, expected: Any) -> list[tuple[str | None, str]]:
    """Problems with a scorer for an item whose ``expected`` is given: its definition
    (:func:`check_definition`) and what it needs of the item (:func:`check_expected`).

    Returns ``(field, message)`` pairs; empty when the scorer can run.
    """
    return check_definition(spec) + check_expected(spec, expected)


def check_expected(spec: ScorerSpec, expected: Any) -> list[tuple[str | None, str]]:
    """What the scorer needs of an item's ``expected`` value, if it is missing or unfit."""
    if not isinstance(spec, ExactMatch | Similarity | Numeric) or spec.expected is not None:
        return []
    if expected is None:
        return [("expected", "needs an expected value, on the item or the scorer")]
    if isinstance(spec, Numeric):
        number = first_number(expected) if isinstance(expected, str) else expected
        if not isinstance(number, int | float) or isinstance(number, bool):
            return [("expected", f"the item's expected {expected!r} is not a number")]
        if not math.isfinite(number):
            return [("expected", f"the item's expected {expected!r} is not finite")]
    return []


def check_definition(spec: ScorerSpec) -> list[tuple[str | None, str]]:
    """Problems with a scorer's own definition: a bad regex, schema, callable or scale."""
    if isinstance(spec, Contains) and (spec.value is None) == (not spec.values):
        return [(None, "give value or values (not both)")]
    if isinstance(spec, Regex):
        return _check_regex(spec)
    if isinstance(spec, JsonSchema):
        return _check_schema(spec.schema)
    if isinstance(spec, Similarity):
        return _check_similarity()
    if isinstance(spec, Judge):
        return _check_judge(spec)
    return _check_callable(spec.callable) if isinstance(spec, PythonScorer) else []


def _check_similarity() -> list[tuple[str | None, str]]:
    if _importable("rapidfuzz"):
        return []
    return [("type", "similarity needs rapidfuzz: pip install 'switchboard[flows]'")]


def _check_regex(spec: Regex) -> list[tuple[str | None, str]]:
    try:
        _regex(spec.pattern, _regex_flags(spec))
    except re.error as exc:
        return [("pattern", f"not a regular expression: {exc}")]
    return []


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _check_schema(schema: dict[str, Any]) -> list[tuple[str | None, str]]:
    if not _importable("jsonschema"):
        return [("type", "json_schema needs jsonschema: pip install 'switchboard[flows]'")]
    try:
        _cached_validator(msgspec.json.encode(schema))
    except Exception as exc:  # jsonschema's SchemaError and friends
        return [("schema", f"not a valid JSON Schema: {getattr(exc, 'message', exc)}")]
    return []


def _check_judge(spec: Judge) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    if spec.scale_min >= spec.scale_max:
        problems.append(("scale_max", "must be greater than scale_min"))
    try:
        parse_judge_config(spec.config)
    except ScorerError as exc:
        problems.append(("config", str(exc)))
    return problems


def _check_callable(path: str) -> list[tuple[str | None, str]]:
    try:
        load_callable(path)
    except ScorerError as exc:
        return [("callable", str(exc))]
    return []


def _verdict(spec: ScorerSpec, passed: bool, detail: str | None = None) -> ItemScore:
    return ItemScore(
        name=scorer_name(spec),
        type=_type(spec),
        score=1.0 if passed else 0.0,
        passed=passed,
        detail=detail,
    )


def _type(spec: ScorerSpec) -> str:
    return str(type(spec).__struct_config__.tag)


def _exact(spec: ExactMatch, output: str, item: DatasetItem) -> ItemScore:
    want = expected_text(spec.expected, item)
    return _verdict(spec, normalize(output, spec) == normalize(want, spec))


def _contains(spec: Contains, output: str) -> ItemScore:
    wanted = spec.values if spec.values else [spec.value or ""]
    haystack = output.casefold() if spec.ignore_case else output
    found = [w for w in wanted if (w.casefold() if spec.ignore_case else w) in haystack]
    passed = len(found) == len(wanted) if spec.all else bool(found)
    missing = [w for w in wanted if w not in found]
    return _verdict(spec, passed, None if passed else f"missing {missing}")


def _matches(spec: Regex, output: str) -> ItemScore:
    pattern = _regex(spec.pattern, _regex_flags(spec))
    matched = pattern.fullmatch(output) if spec.full_match else pattern.search(output)
    return _verdict(spec, matched is not None)


def _valid_json(spec: ValidJson, output: str) -> ItemScore:
    try:
        parse_json_output(output, strict=spec.strict)
    except ScorerError as exc:
        return _verdict(spec, False, str(exc))
    return _verdict(spec, True)


def _json_schema(spec: JsonSchema, output: str) -> ItemScore:
    try:
        value = parse_json_output(output, strict=spec.strict)
    except ScorerError as exc:
        return _verdict(spec, False, str(exc))
    validator = _cached_validator(msgspec.json.encode(spec.schema))
    problem = next(iter(validator.iter_errors(value)), None)
    if problem is None:
        return _verdict(spec, True)
    where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
    return _verdict(spec, False, f"{where}: {problem.message}")


def _numeric(spec: Numeric, output: str, item: DatasetItem) -> ItemScore:
    if spec.expected is not None:
        want: float | None = spec.expected
    elif isinstance(item.expected, int | float) and not isinstance(item.expected, bool):
        want = float(item.expected)
    else:
        want = first_number(expected_text(None, item))
    if want is None:
        raise ScorerError("the expected value is not a number")
    got = first_number(output)
    if got is None:
        return _verdict(spec, False, "no number in the output")
    allowed = max(spec.tolerance, spec.relative * abs(want))
    return _verdict(spec, abs(got - want) <= allowed, f"got {got:g}, expected {want:g}")


def _similarity(spec: Similarity, output: str, item: DatasetItem) -> ItemScore:
    from rapidfuzz import fuzz

    want = expected_text(spec.expected, item)
    if spec.ignore_case:
        output, want = output.casefold(), want.casefold()
    ratio: float = getattr(fuzz, spec.method)(output, want) / 100.0
    return ItemScore(
        name=scorer_name(spec),
        type="similarity",
        score=round(ratio, 6),
        passed=ratio >= spec.threshold,
    )


def judge_turns(spec: Judge, output: str, item: DatasetItem) -> list[Turn]:
    """What the judge is asked: the rubric, the item's chat, the reference and the answer."""
    from functions.core.evals.datasets import item_turns

    chat = "\n".join(f"[{turn.role}] {turn.content}" for turn in item_turns(item))
    reference = (
        "" if item.expected is None else f"\n\nREFERENCE ANSWER:\n{expected_text(None, item)}"
    )
    return [
        Turn(
            role="user",
            content=JUDGE_INSTRUCTIONS.format(low=spec.scale_min, high=spec.scale_max)
            + f"\n\nRUBRIC:\n{spec.rubric}\n\nCONVERSATION:\n{chat}{reference}"
            + f"\n\nRESPONSE:\n{output}",
        )
    ]


def parse_judge_score(spec: Judge, reply: str) -> ItemScore:
    """The judge's ``Score: N`` (its last one) as a normalised score and a verdict."""
    found = list(_JUDGE_SCORE.finditer(reply))
    if not found:
        raise ScorerError(f"the judge's reply has no 'Score: N': {reply[:200]!r}")
    raw = float(found[-1]["score"])
    if not spec.scale_min <= raw <= spec.scale_max:
        raise ScorerError(
            f"the judge's score {raw:g} is outside {spec.scale_min}..{spec.scale_max}"
        )
    span = spec.scale_max - spec.scale_min
    pass_at = spec.pass_at if spec.pass_at is not None else spec.scale_min + span / 2
    return ItemScore(
        name=scorer_name(spec),
        type="judge",
        score=round((raw - spec.scale_min) / span, 6),
        passed=raw >= pass_at,
        detail=f"{raw:g}/{spec.scale_max}",
    )


async def _judge(spec: Judge, output: str, item: DatasetItem, ask: JudgeAsk | None) -> ItemScore:
    if ask is None:
        raise ScorerError("no judge can be asked in this context")
    reply = await ask(spec.config, judge_turns(spec, output, item))
    return parse_judge_score(spec, reply)


async def _python(spec: PythonScorer, output: str, item: DatasetItem) -> ItemScore:
    fn = load_callable(spec.callable)
    result = fn(output, item, **spec.params)
    if inspect.isawaitable(result):
        result = await result
    name, kind = scorer_name(spec), "python"
    if isinstance(result, bool):
        return ItemScore(name=name, type=kind, score=float(result), passed=result)
    if isinstance(result, int | float):
        value = float(result)
        return ItemScore(name=name, type=kind, score=value, passed=value >= spec.threshold)
    if isinstance(result, Mapping):
        score = result.get("score")
        passed = result.get("passed")
        if score is None and passed is None:
            raise ScorerError("the callable's mapping has neither score nor passed")
        value = float(bool(passed)) if score is None else float(score)
        verdict = value >= spec.threshold if passed is None else bool(passed)
        detail = result.get("detail")
        return ItemScore(
            name=name,
            type=kind,
            score=value,
            passed=verdict,
            detail=None if detail is None else str(detail),
        )
    raise ScorerError(f"the callable returned {type(result).__name__}, not bool, number or mapping")


async def run_scorer(
    spec: ScorerSpec, output: str, item: DatasetItem, ask: JudgeAsk | None = None
) -> ItemScore:
    """One scorer's verdict; whatever it raises becomes the verdict's ``error``."""
    try:
        result: ItemScore
        if isinstance(spec, ExactMatch):
            result = _exact(spec, output, item)
        elif isinstance(spec, Contains):
            result = _contains(spec, output)
        elif isinstance(spec, Regex):
            result = _matches(spec, output)
        elif isinstance(spec, ValidJson):
            result = _valid_json(spec, output)
        elif isinstance(spec, JsonSchema):
            result = _json_schema(spec, output)
        elif isinstance(spec, Numeric):
            result = _numeric(spec, output, item)
        elif isinstance(spec, Similarity):
            result = _similarity(spec, output, item)
        elif isinstance(spec, Judge):
            result = await _judge(spec, output, item, ask)
        else:
            result = await _python(spec, output, item)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, ScorerError) else f"{type(exc).__name__}: {exc}"
        return ItemScore(name=scorer_name(spec), type=_type(spec), error=message[:2000])
    if result.score is not None and not math.isfinite(result.score):
        return ItemScore(name=result.name, type=result.type, error="the score is not finite")
    return result


def effective_scorers(run: Sequence[ScorerSpec], item: DatasetItem) -> list[ScorerSpec]:
    """The run's scorers and the item's own; an item's scorer replaces the run's of its name."""
    own = {scorer_name(spec) for spec in item.scorers}
    return [spec for spec in run if scorer_name(spec) not in own] + list(item.scorers)


async def score_output(
    specs: Sequence[ScorerSpec], output: str, item: DatasetItem, ask: JudgeAsk | None = None
) -> list[ItemScore]:
    """Every scorer's verdict on ``output``, in order (judges asked one after another)."""
    return [await run_scorer(spec, output, item, ask) for spec in specs]
