"""Evaluation: dataset items, scorer definitions, results and the reports made from them.

Scorer definitions are one tagged union (``type`` names the scorer): a dataset line's
``scorers`` and a run's scorers decode into the same Structs, and a typo in a parameter is
an error naming it (``forbid_unknown_fields``), never a scorer silently using a default.

Dataset items and scorers are :class:`~functions.core.schemas.FrozenInput`: what a dataset
brings (a NUL, an integer beyond 64 bits, JSON nested too deep) is refused by the same
checks as an HTTP body, before it can reach a send or a database.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from functions.core.messages.schemas import Role
from functions.core.schemas import END, FrozenInput, Output

ItemId = Annotated[str, Meta(min_length=1, max_length=200)]
ScorerName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}" + END)]
NonNegative = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]


class DatasetMessage(FrozenInput, frozen=True, kw_only=True, omit_defaults=True):
    """One turn of an item's chat, in OpenAI's shape (``content`` a string or parts)."""

    role: Role
    content: str | list[dict[str, Any]] = ""
    name: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


class _Scorer(FrozenInput, frozen=True, kw_only=True, tag_field="type"):
    # Shown in reports; two scorers of one type need names of their own.
    name: ScorerName | None = None


class ExactMatch(_Scorer, frozen=True, tag="exact_match"):
    """The output equals ``expected`` (the item's, unless given here) after normalising."""

    expected: str | None = None
    ignore_case: bool = False
    strip: bool = True
    collapse_whitespace: bool = True
    remove_punctuation: bool = False
    # NFKC: full-width and compatibility forms compare equal to their plain twins.
    unicode_normalize: bool = True


class Contains(_Scorer, frozen=True, tag="contains"):
    """The output contains ``value`` (or any, or ``all``, of ``values``)."""

    value: str | None = None
    values: list[Annotated[str, Meta(min_length=1)]] | None = None
    all: bool = False
    ignore_case: bool = False


class Regex(_Scorer, frozen=True, tag="regex"):
    """The output matches ``pattern`` (anywhere, or whole with ``full_match``)."""

    pattern: Annotated[str, Meta(min_length=1)]
    ignore_case: bool = False
    multiline: bool = False
    dotall: bool = False
    full_match: bool = False


class ValidJson(_Scorer, frozen=True, tag="json_valid"):
    """The output is JSON (inside a Markdown code fence too, unless ``strict``)."""

    strict: bool = False


class JsonSchema(_Scorer, frozen=True, tag="json_schema"):
    """The output is JSON valid against ``schema`` (JSON Schema, its own declared draft)."""

    schema: dict[str, Any]
    strict: bool = False


class Numeric(_Scorer, frozen=True, tag="numeric"):
    """The first number in the output is within a tolerance of ``expected``.

    Passes when ``|got - expected| <= max(tolerance, relative * |expected|)``.
    """

    expected: float | None = None
    tolerance: NonNegative = 0.0
    relative: NonNegative = 0.0


class Similarity(_Scorer, frozen=True, tag="similarity"):
    """String similarity to ``expected`` (rapidfuzz), 0 to 1; passes at ``threshold``."""

    expected: str | None = None
    method: Literal["ratio", "partial_ratio", "token_sort_ratio", "token_set_ratio"] = "ratio"
    threshold: Fraction = 0.8
    ignore_case: bool = False


class Judge(_Scorer, frozen=True, tag="judge"):
    """Another configuration grades the output against ``rubric`` on a numeric scale.

    ``config`` is ``name`` or ``name@version``. The judge's reply must contain the score as
    ``Score: N`` (the prompt asks for exactly that); the score is normalised to 0..1 and
    passes at ``pass_at`` (default: the top of the scale's upper half).
    """

    config: Annotated[str, Meta(min_length=1, max_length=120)]
    rubric: Annotated[str, Meta(min_length=1, max_length=20_000)]
    scale_min: int = 1
    scale_max: int = 5
    pass_at: float | None = None


class PythonScorer(_Scorer, frozen=True, tag="python"):
    """Any function by dotted path (``package.module:function`` or ``package.module.function``).

    Called as ``function(output, item, **params)`` (sync or async); it returns a bool (a
    verdict), a number (a score; passes at ``threshold``) or a mapping with ``score``,
    ``passed`` and ``detail``.
    """

    callable: Annotated[str, Meta(min_length=3, max_length=300)]
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    threshold: float = 0.5


ScorerSpec = (
    ExactMatch
    | Contains
    | Regex
    | ValidJson
    | JsonSchema
    | Numeric
    | Similarity
    | Judge
    | PythonScorer
)


def scorer_name(spec: ScorerSpec) -> str:
    """What a scorer is called in results and reports: its ``name``, else its type."""
    return spec.name or str(type(spec).__struct_config__.tag)


class DatasetItem(FrozenInput, frozen=True, kw_only=True, omit_defaults=True):
    """One line of a dataset: a chat (``messages``) or a ``prompt``, and what to expect."""

    id: ItemId
    messages: list[DatasetMessage] | None = None
    prompt: str | None = None
    expected: Any = None
    scorers: list[ScorerSpec] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class EvalTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A configuration pinned to one immutable version: what a run evaluates."""

    name: str
    version: int
    id: uuid.UUID

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class ItemScore(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One scorer's verdict on one output. ``error`` set: the scorer failed (no score)."""

    name: str
    type: str
    score: float | None = None
    passed: bool | None = None
    detail: str | None = None
    error: str | None = None


RunStatus = Literal["running", "complete", "failed", "interrupted"]


class EvalRunOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    dataset: str
    dataset_sha256: str
    items: int
    configs: list[EvalTarget]
    scorers: list[ScorerSpec]
    parameters: dict[str, Any]
    status: RunStatus
    owner: uuid.UUID
    # The process running it now (``process_lease.id``), if any.
    runner: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    results: int = 0
    report: dict[str, Any] | None = None
    error: str | None = None


class EvalResultOut(Output, kw_only=True):
    """One item under one configuration: what the model said and how it scored."""

    item_id: str
    item_index: int
    config: str
    config_id: uuid.UUID
    output: str
    scores: list[ItemScore]
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1
    message_id: uuid.UUID | None = None
    created_at: datetime | None = None
