"""Usage over time on both engines, against numbers computed here from the seeded rows.

The history is seeded as message rows and carried into the usage ledger by the
migration's backfill, as a database upgraded with that history would be: the report reads
the ledger (finished replies) and the pending messages.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from piccolo.engine.base import Engine

from functions.core.db.piccolo_migrations.core_2026_12_07t19_01_00_usage_ledger_backfill import (
    BACKFILL,
)
from functions.core.db.sql import fetch
from functions.core.errors import InvalidInputError
from functions.core.usage.ledger import UnstoredCall, record_unstored
from functions.core.usage.service import usage_report
from tests.core.exports.conftest import (
    T0,
    History,
    add_config,
    add_conversation,
    add_key,
    add_message,
)

H = timedelta(hours=1)


async def seed() -> tuple[History, list[dict[str, Any]]]:
    """Replies over three hours on two configurations and models, some failed; and what
    each reply was (for the expected numbers)."""
    owner = await add_key("team")
    other = await add_key("other")
    prod = await add_config("prod")
    big = await add_config("big")
    history = History(owner=owner, other_owner=other, config=prod)
    replies: list[dict[str, Any]] = []

    async def exchange(
        convo: uuid.UUID, at: datetime, *, config: uuid.UUID, name: str, model: str, **fields: Any
    ) -> None:
        await add_message(history, convo, created_at=at, completed_at=at)
        values = {
            "llm_config": config,
            "model": model,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "latency_ms": 100.0,
            "ttft_ms": 20.0,
            **fields,
        }
        status = values.pop("status", "complete")
        await add_message(
            history,
            convo,
            role="assistant",
            created_at=at,
            completed_at=None if status == "pending" else at,
            status=status,
            **values,
        )
        replies.append({"at": at, "config": name, "model": model, "status": status, **values})

    first = await add_conversation(history, config_name="prod")
    second = await add_conversation(history, config_name="big")
    theirs = await add_conversation(history, owner=other, config_name="prod")
    for minute, latency in ((5, 120.0), (20, 80.0), (40, 400.0)):
        at = T0 + timedelta(minutes=minute)
        await exchange(
            first, at, config=prod, name="prod", model="sim-model", latency_ms=latency,
            ttft_ms=latency / 4,
        )  # fmt: skip
    await exchange(
        first, T0 + H + timedelta(minutes=1), config=prod, name="prod", model="sim-model",
        status="failed", error_code="llm_timeout", error_message="no first token",
        prompt_tokens=None, completion_tokens=None, latency_ms=None, ttft_ms=None,
    )  # fmt: skip
    await exchange(
        second, T0 + H + timedelta(minutes=2), config=big, name="big", model="big-model",
        latency_ms=900.0, ttft_ms=300.0, prompt_tokens=40, completion_tokens=60,
    )  # fmt: skip
    await exchange(
        second, T0 + H + timedelta(minutes=3), config=big, name="big", model="big-model",
        status="cancelled", error_code="cancelled", error_message="client went away",
        latency_ms=None, ttft_ms=None, completion_tokens=3,
    )  # fmt: skip
    await exchange(
        theirs, T0 + 2 * H + timedelta(minutes=30), config=prod, name="prod", model="sim-model",
        latency_ms=50.0, ttft_ms=10.0,
    )  # fmt: skip
    await exchange(
        theirs, T0 + 2 * H + timedelta(minutes=31), config=prod, name="prod", model="sim-model",
        status="pending", latency_ms=None, ttft_ms=None, prompt_tokens=None,
        completion_tokens=None,
    )  # fmt: skip
    # A client's own assistant turn (no model) is not a reply; outside the window neither.
    await add_message(
        history, first, role="assistant", created_at=T0, completed_at=T0, llm_config=None
    )
    await exchange(
        first, T0 + 5 * H, config=prod, name="prod", model="sim-model", latency_ms=9999.0
    )
    await fetch(BACKFILL)
    return history, replies


def expected_row(replies: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in replies if r["status"] == "complete"]
    latencies = [r["latency_ms"] for r in done]
    ttfts = [r["ttft_ms"] for r in done]

    def pct(values: list[float], q: int) -> float | None:
        return float(np.percentile(values, q)) if values else None

    return {
        "replies": len(replies),
        **{s: sum(r["status"] == s for r in replies) for s in ("complete", "failed", "cancelled")},
        "pending": sum(r["status"] == "pending" for r in replies),
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in replies),
        "completion_tokens": sum(r["completion_tokens"] or 0 for r in replies),
        "latency_mean_ms": sum(latencies) / len(latencies) if latencies else None,
        "latency_p50_ms": pct(latencies, 50),
        "latency_p95_ms": pct(latencies, 95),
        "ttft_p50_ms": pct(ttfts, 50),
        "ttft_p95_ms": pct(ttfts, 95),
    }


def as_dict(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in expected_row([]) if name != "replies"} | {
        "replies": row.replies
    }


async def test_hourly_usage_per_config_and_model(db: Engine[Any]) -> None:
    _, replies = await seed()
    report = await usage_report(since=T0, until=T0 + 3 * H, bucket="hour")

    in_window = [r for r in replies if r["at"] < T0 + 3 * H]
    groups: dict[tuple[datetime, str, str], list[dict[str, Any]]] = {}
    for reply in in_window:
        start = reply["at"].replace(minute=0, second=0, microsecond=0)
        groups.setdefault((start, reply["config"], reply["model"]), []).append(reply)
    assert [(r.start, r.config, r.model) for r in report.rows] == sorted(groups)
    for row in report.rows:
        expected = expected_row(groups[(row.start, row.config or "", row.model or "")])
        assert as_dict(row) == pytest.approx(expected)
    first = report.rows[0]
    assert (first.replies, first.conversations, first.latency_p50_ms) == (3, 1, 120.0)
    by_key = {(r.start, r.config): r for r in report.rows}
    assert by_key[(T0 + H, "prod")].error_rate == 1.0
    assert by_key[(T0 + H, "big")].error_rate == 0.5

    totals = {(t.config, t.model): t for t in report.totals}
    for (config, model), row in totals.items():
        mine = [r for r in in_window if (r["config"], r["model"]) == (config, model)]
        assert as_dict(row) == pytest.approx(expected_row(mine))
        assert row.start == T0
    assert totals[("prod", "sim-model")].conversations == 2
    assert totals[("big", "big-model")].error_rate == 0.5

    assert [(e.config, e.model, e.error_code, e.count) for e in report.errors] == [
        ("big", "big-model", "cancelled", 1),
        ("prod", "sim-model", "llm_timeout", 1),
    ]
    assert report.errors[1].example == "no first token"
    assert report.errors[1].last_seen == T0 + H + timedelta(minutes=1)
    assert report.bucket_starts() == [T0, T0 + H, T0 + 2 * H]


async def test_daily_usage_of_one_key(db: Engine[Any]) -> None:
    history, replies = await seed()
    report = await usage_report(since=T0 - H, until=T0 + 6 * H, bucket="day", owner=history.owner)
    theirs = {T0 + 2 * H + timedelta(minutes=30), T0 + 2 * H + timedelta(minutes=31)}
    mine = [r for r in replies if r["at"] not in theirs]
    day = T0.replace(hour=0)
    assert [(r.start, r.config) for r in report.rows] == [(day, "big"), (day, "prod")]
    prod = report.rows[1]
    assert as_dict(prod) == pytest.approx(expected_row([r for r in mine if r["config"] == "prod"]))
    assert report.bucket_starts() == [day]


async def test_a_window_needs_time_zones_and_an_order(db: Engine[Any]) -> None:
    with pytest.raises(InvalidInputError, match="time zone"):
        await usage_report(since=datetime(2026, 1, 1))
    with pytest.raises(InvalidInputError, match="after"):
        await usage_report(since=T0, until=T0)
    empty = await usage_report(since=datetime.now(UTC) - H)
    assert (empty.rows, empty.totals, empty.errors) == ([], [], [])


async def test_a_call_with_no_conversation_counts_as_usage_not_as_a_conversation(
    db: Engine[Any],
) -> None:
    """An embedding's ledger row (no conversation: the nil id) is a call and its tokens,
    never one more conversation."""
    owner = await add_key("embedder")
    for minute in range(3):
        await record_unstored(
            UnstoredCall(
                owner=owner,
                model="embed-model",
                status="complete",
                asked_at=T0 + timedelta(minutes=minute),
                finished_at=T0 + timedelta(minutes=minute, seconds=1),
                prompt_tokens=7,
                completion_tokens=0,
            )
        )
    report = await usage_report(since=T0, until=T0 + H, owner=owner)
    [total] = report.totals
    assert (total.model, total.replies, total.prompt_tokens) == ("embed-model", 3, 21)
    assert total.conversations == 0
