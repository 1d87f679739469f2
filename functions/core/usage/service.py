"""How the gateway was used: its replies counted, timed and grouped, from the usage ledger.

A finished reply is a row of the usage ledger (``usage_ledger``, written with its outcome
and kept when its conversation is deleted, so a key cannot erase its usage); a reply still
being generated is its pending message. Each is counted at the time it was asked
(``asked_at``, the reply's ``created_at``). Replies are grouped by time bucket (an hour or
a day, in UTC), configuration name and model: counts by status, distinct conversations,
tokens, and the latency and time to first token of the completed ones (mean, p50, p95).
Errors are counted by code.

The database aggregates, through the engine port (``EnginePort.aggregate``): on
PostgreSQL in one statement per grouping (``percentile_cont`` for the percentiles); SQLite
has no percentile aggregate, so there the completed replies' timings are read and their
percentiles computed by the same rule. SQLite is the single-machine database, so that read
is small.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.core.db.port import Percentile, current_port
from functions.core.db.sql import fetch
from functions.core.errors import InvalidInputError
from functions.core.usage.ledger import NO_CONVERSATION
from functions.core.usage.schemas import Bucket, ErrorCount, UsageReport, UsageRow

if TYPE_CHECKING:
    import uuid

# The replies asked for in a window, under one shape (``m``): the ledger's finished ones and
# the pending ones (not in the ledger until they finish). ``owner`` filters both.
_LEDGER = (
    "SELECT u.asked_at AS created_at, u.owner_key, u.conversation, u.config_name AS config, "
    "u.model, u.status, u.prompt_tokens, u.completion_tokens, u.latency_ms, u.ttft_ms, "
    "u.error_code, u.error_message FROM usage_ledger u "
    "WHERE u.asked_at >= {} AND u.asked_at < {}"
)
_PENDING = (
    "SELECT p.created_at, c.owner_key, p.conversation, l.name AS config, p.model, p.status, "
    "p.prompt_tokens, p.completion_tokens, p.latency_ms, p.ttft_ms, p.error_code, "
    "p.error_message FROM message p JOIN conversation c ON c.id = p.conversation "
    "LEFT JOIN llm_config l ON l.id = p.llm_config "
    "WHERE p.status = 'pending' AND p.role = 'assistant' AND p.model IS NOT NULL "
    "AND p.created_at >= {} AND p.created_at < {}"
)
_COUNTS = (
    "count(*) AS replies, "
    "sum(CASE WHEN m.status = 'complete' THEN 1 ELSE 0 END) AS complete, "
    "sum(CASE WHEN m.status = 'failed' THEN 1 ELSE 0 END) AS failed, "
    "sum(CASE WHEN m.status = 'cancelled' THEN 1 ELSE 0 END) AS cancelled, "
    "sum(CASE WHEN m.status = 'pending' THEN 1 ELSE 0 END) AS pending, "
    # A call that stores no conversation (an embedding) holds the nil id: not one.
    f"count(DISTINCT CASE WHEN m.conversation <> '{NO_CONVERSATION}' THEN m.conversation END) "
    "AS conversations, "
    "coalesce(sum(m.prompt_tokens), 0) AS prompt_tokens, "
    "coalesce(sum(m.completion_tokens), 0) AS completion_tokens, "
    "avg(CASE WHEN m.status = 'complete' THEN m.latency_ms END) AS latency_mean_ms"
)
# Of the completed replies only.
_PERCENTILES = (
    Percentile("latency_p50_ms", "m.latency_ms", 0.5),
    Percentile("latency_p95_ms", "m.latency_ms", 0.95),
    Percentile("ttft_p50_ms", "m.ttft_ms", 0.5),
    Percentile("ttft_p95_ms", "m.ttft_ms", 0.95),
)


def _from(owner: uuid.UUID | None) -> str:
    """The FROM clause over the window's replies; its parameters are :func:`_args`'."""
    if owner is None:
        return f" FROM ({_LEDGER} UNION ALL {_PENDING}) m WHERE true"
    return (
        f" FROM ({_LEDGER} AND u.owner_key = {{}} UNION ALL {_PENDING} AND c.owner_key = {{}})"
        " m WHERE true"
    )


def _args(since: datetime, until: datetime, owner: uuid.UUID | None) -> list[Any]:
    window = [since, until] if owner is None else [since, until, owner]
    return [*window, *window]


async def usage_report(
    *,
    since: datetime,
    until: datetime | None = None,
    bucket: Bucket = "hour",
    owner: uuid.UUID | None = None,
) -> UsageReport:
    """The replies created in ``[since, until)`` (``until`` defaults to now), per
    ``bucket``, configuration and model; for the whole window; and errors by code.
    ``owner`` keeps one key's conversations only."""
    if bucket not in ("hour", "day"):
        raise InvalidInputError("bucket is hour or day", details={"field": "bucket"})
    since, until = _utc(since, "since"), _utc(until or datetime.now(UTC), "until")
    if until <= since:
        raise InvalidInputError("until must be after since", details={"field": "until"})
    args = _args(since, until, owner)
    rows = await _aggregate(bucket, since, owner, args)
    totals = await _aggregate(None, since, owner, args)
    errors = await fetch(
        "SELECT m.config AS config, m.model AS model, m.error_code AS error_code, "
        "count(*) AS count, max(m.created_at) AS last_seen, max(m.error_message) AS example"
        + _from(owner)
        + " AND m.error_code IS NOT NULL GROUP BY m.config, m.model, m.error_code"
        " ORDER BY count(*) DESC, m.error_code",
        *args,
    )
    return UsageReport(
        since=since,
        until=until,
        bucket=bucket,
        rows=rows,
        totals=totals,
        errors=[
            ErrorCount(
                config=row["config"],
                model=row["model"],
                error_code=row["error_code"],
                count=int(row["count"]),
                last_seen=_time(row["last_seen"]),
                example=row["example"] or "",
            )
            for row in errors
        ],
    )


async def _aggregate(
    bucket: Bucket | None, since: datetime, owner: uuid.UUID | None, args: list[Any]
) -> list[UsageRow]:
    port = current_port()
    rows = await port.aggregate(
        # '' for the whole window: one group per configuration and model.
        keys={
            "start": "''" if bucket is None else port.bucket_start("m.created_at", bucket),
            "config": "m.config",
            "model": "m.model",
        },
        columns=_COUNTS,
        source=_from(owner),
        args=args,
        percentiles=_PERCENTILES,
        within="m.status = 'complete'",
    )
    return [
        UsageRow(
            start=_time(row["start"]) if row["start"] else since,
            config=row["config"],
            model=row["model"],
            replies=int(row["replies"]),
            complete=int(row["complete"]),
            failed=int(row["failed"]),
            cancelled=int(row["cancelled"]),
            pending=int(row["pending"]),
            conversations=int(row["conversations"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            latency_mean_ms=_float(row["latency_mean_ms"]),
            latency_p50_ms=_float(row["latency_p50_ms"]),
            latency_p95_ms=_float(row["latency_p95_ms"]),
            ttft_p50_ms=_float(row["ttft_p50_ms"]),
            ttft_p95_ms=_float(row["ttft_p95_ms"]),
        )
        for row in rows
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _time(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _utc(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInputError(f"{field} needs a time zone", details={"field": field})
    return value.astimezone(UTC)
