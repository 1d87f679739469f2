"""``GET /v1/usage``'s numbers (``usage.totals``, read from the rollup) equal the stored
messages exactly after a mixed run: completed, streamed, failed, cancelled and
interrupted replies of two keys, a call stored as no conversation, and a reply finished
after a sweep retired it (the ledger row replaced: the rollup takes the old one back).
Both engines."""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.schemas import MessageStarted, ReplyDelta, ReplyFailed
from functions.core.chat.service import ChatService
from functions.core.db.port import percentile_cont
from functions.core.db.sql import fetch
from functions.core.errors import InvalidInputError
from functions.core.liveness.service import sweep_interrupted
from functions.core.usage import rollup
from functions.core.usage.ledger import UnstoredCall, record_unstored
from functions.core.usage.schemas import UsageGroup
from functions.core.usage.totals import parse_group_by, parse_time, usage_totals
from tests.core.chat.conftest import LONG_STREAM, MakeClient, new_party
from tests.core.llm.conftest import Faults
from tests.support.simulator import SimulatorProcess

HOUR = timedelta(hours=1)


def whole_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


async def exchanges_stored() -> list[dict[str, Any]]:
    """Every finished reply the messages hold, with its owner, configuration and version."""
    return await fetch(
        "SELECT c.owner_key, l.name AS config, l.version, m.model, m.status, m.error_code, "
        "m.prompt_tokens, m.completion_tokens, m.latency_ms, m.ttft_ms FROM message m "
        "JOIN conversation c ON c.id = m.conversation "
        "LEFT JOIN llm_config l ON l.id = m.llm_config "
        "WHERE m.role = 'assistant' AND m.model IS NOT NULL AND m.status <> 'pending'"
    )


def expected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = Counter(row["status"] for row in rows)
    prompt = sum(row["prompt_tokens"] or 0 for row in rows)
    completion = sum(row["completion_tokens"] or 0 for row in rows)
    return {
        "requests": len(rows),
        "complete": statuses["complete"],
        "failed": statuses["failed"],
        "cancelled": statuses["cancelled"],
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "errors": dict(sorted(Counter(r["error_code"] for r in rows if r["error_code"]).items())),
    }


def counted(group: UsageGroup) -> dict[str, Any]:
    return {
        "requests": group.requests,
        "complete": group.complete,
        "failed": group.failed,
        "cancelled": group.cancelled,
        "prompt_tokens": group.prompt_tokens,
        "completion_tokens": group.completion_tokens,
        "total_tokens": group.total_tokens,
        "errors": group.errors,
    }


def near(estimate: float | None, exact: float | None) -> bool:
    """Within the histogram's bucket width (a factor of √2) of the exact value."""
    if exact is None or estimate is None:
        return estimate is exact
    return exact / math.sqrt(2) <= estimate <= exact * math.sqrt(2)


def at_rank(estimate: float | None, values: list[float], fraction: float) -> bool:
    """Within a bucket of the replies either side of the percentile's rank."""
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low, high = ordered[math.floor(rank)], ordered[math.ceil(rank)]
    return estimate is not None and low / math.sqrt(2) <= estimate <= high * math.sqrt(2)


async def test_usage_equals_the_stored_messages_after_a_mixed_run(
    db: object, sim: SimulatorProcess, make_client: MakeClient, faults: Faults
) -> None:
    since = whole_hour(datetime.now(UTC)) - HOUR
    until = since + 3 * HOUR
    first, second = await new_party(), await new_party()
    chat = ChatService(make_client(sim.base_url))
    for i in range(3):
        await chat.send(first.says(f"question {i}"))
    _ = [event async for event in chat.stream(first.says("streamed"))]
    await chat.send(second.says("from the other key"))
    faults.add({"X-Sim-Fault": "cut:2"}, times=1)
    events = [event async for event in chat.stream(first.says("break halfway"))]
    assert isinstance(events[-1], ReplyFailed)
    faults.add({"X-Sim-Fault": "500"}, times=1)
    with pytest.raises(Exception, match=r"."):
        await chat.send(second.says("fail outright"))
    faults.add(LONG_STREAM, times=1)
    stream = ChatService(make_client(sim.base_url)).stream(first.says("and leave"))
    assert isinstance(await anext(stream), MessageStarted)
    assert isinstance(await anext(stream), ReplyDelta)
    await stream.aclose()
    # A reply retired as interrupted, then finished by its own process after all: the
    # ledger's row is replaced, and the rollup with it.
    exchange = await Exchanges(busy_timeout_s=0).begin(second.says("are you there?"))
    [retired] = await sweep_interrupted(bound=timedelta(0), now=datetime.now(UTC) + HOUR * 24)
    assert retired.message_id == exchange.assistant_message.id
    # A call stored as no conversation (an embedding): in the ledger, not the messages.
    await record_unstored(
        UnstoredCall(
            owner=first.owner,
            model="embedder",
            status="complete",
            asked_at=datetime.now(UTC),
            finished_at=datetime.now(UTC),
            prompt_tokens=7,
            latency_ms=3.0,
        )
    )
    unstored = {
        "owner_key": first.owner,
        "config": None,
        "version": None,
        "model": "embedder",
        "status": "complete",
        "error_code": None,
        "prompt_tokens": 7,
        "completion_tokens": None,
        "latency_ms": 3.0,
        "ttft_ms": None,
    }
    stored = [*await exchanges_stored(), unstored]
    assert {row["status"] for row in stored} == {"complete", "failed", "cancelled"}
    assert any(row["error_code"] == "interrupted" for row in stored)

    # No grouping: one row, the totals.
    [total] = (await usage_totals(since=since, until=until)).data
    assert counted(total) == expected(stored)
    completed = [row for row in stored if row["status"] == "complete"]
    latencies = [row["latency_ms"] for row in completed]
    for fraction, estimate in ((0.5, total.latency_ms.p50), (0.95, total.latency_ms.p95)):
        assert at_rank(estimate, latencies, fraction), (fraction, estimate, latencies)
    ttfts = [row["ttft_ms"] for row in completed if row["ttft_ms"] is not None]
    assert at_rank(total.ttft_ms.p50, ttfts, 0.5)

    # By key, and by key and configuration version: each group equals its messages.
    by_key = await usage_totals(since=since, until=until, group_by=["key"])
    assert {str(g.key_id) for g in by_key.data} == {str(first.owner), str(second.owner)}
    for group in by_key.data:
        mine = [row for row in stored if str(row["owner_key"]) == str(group.key_id)]
        assert counted(group) == expected(mine)
        assert group.key_name == "owner"
    detailed = await usage_totals(
        since=since, until=until, group_by=["key", "config_version", "model", "hour"]
    )
    groups: dict[tuple[str, str | None, int | None, str | None], list[dict[str, Any]]] = (
        defaultdict(list)
    )
    for row in stored:
        groups[str(row["owner_key"]), row["config"], row["version"], row["model"]].append(row)
    assert len(detailed.data) >= len(groups)  # an hour boundary may split a group
    merged: dict[tuple[str, str | None, int | None, str | None], Counter[str]] = defaultdict(
        Counter
    )
    for group in detailed.data:
        assert group.start is not None
        assert since <= group.start < until
        merged[str(group.key_id), group.config, group.config_version, group.model].update(
            {k: v for k, v in counted(group).items() if k != "errors"}
        )
    assert set(merged) == set(groups)
    for name, rows in groups.items():
        want = {k: v for k, v in expected(rows).items() if k != "errors"}
        assert {k: merged[name][k] for k in want} == want

    # A key sees its own only; the upstream is the one that answered.
    own = await usage_totals(since=since, until=until, owner=second.owner, group_by=["upstream"])
    upstreams = {group.upstream for group in own.data}
    assert sim.base_url in upstreams
    assert (
        sum(group.requests for group in own.data)
        == expected([row for row in stored if str(row["owner_key"]) == str(second.owner)])[
            "requests"
        ]
    )
    # Nothing outside the window.
    assert (await usage_totals(since=until, until=until + HOUR)).data == []

    # The rollup holds what the ledger holds, row for row summed.
    [ledger] = await fetch("SELECT count(*) AS n FROM usage_ledger")
    [rolled] = await fetch("SELECT sum(requests) AS n FROM usage_rollup")
    assert int(ledger["n"]) == int(rolled["n"]) == len(stored)


async def test_the_histogram_and_its_migration_agree() -> None:
    from functions.core.db.piccolo_migrations import core_2026_12_08t02_20_00_usage_rollup as made

    assert made.BOUNDS_MS == rollup.BOUNDS_MS
    assert rollup.bucket_of(0.5) == 0
    assert rollup.bucket_of(1.0) == 1
    assert rollup.bucket_of(1e9) == len(rollup.BOUNDS_MS)
    assert rollup.percentile([0] * rollup.BUCKETS, 0.5) is None
    # Many replies: within a bucket of the exact percentile.
    values = [50.0 * 1.01**i for i in range(500)]
    counts = [0] * rollup.BUCKETS
    for value in values:
        counts[rollup.bucket_of(value)] += 1
    for fraction in (0.5, 0.95):
        assert near(rollup.percentile(counts, fraction), percentile_cont(values, fraction))
    # Few: in the bucket of the reply at that rank (an interpolation across a gap, as
    # percentile_cont makes between 400 and 5000 ms, is not what the histogram can know).
    few = [0] * rollup.BUCKETS
    for value in (10.0, 20.0, 30.0, 400.0, 5000.0):
        few[rollup.bucket_of(value)] += 1
    assert near(rollup.percentile(few, 0.5), 30.0)
    assert near(rollup.percentile(few, 0.95), 400.0)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: parse_time("yesterday", "from"), "from"),
        (lambda: parse_time("2026-12-01T00:00:00", "to"), "to"),  # no time zone
        (lambda: parse_time("2026-13-01", "from"), "from"),
        (lambda: parse_time("\x00" * 10, "from"), "from"),
        (lambda: parse_group_by("key,wat"), "group_by"),
        (lambda: parse_group_by("key;drop table"), "group_by"),
    ],
)
def test_hostile_parameters_are_refused_by_name(call: Any, field: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        call()
    assert refused.value.details["field"] == field


async def test_a_window_is_whole_hours_and_bounded(db: object) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="whole hour"):
        await usage_totals(since=start + timedelta(minutes=30), until=start + HOUR)
    with pytest.raises(InvalidInputError, match="after"):
        await usage_totals(since=start, until=start)
    with pytest.raises(InvalidInputError, match="366 days"):
        await usage_totals(since=start, until=start + timedelta(days=400))
    with pytest.raises(InvalidInputError, match="by hour"):
        await usage_totals(since=start, until=start + timedelta(days=40), group_by=["hour"])
    answer = await usage_totals(
        since=start, until=start + timedelta(days=40), group_by=["day"], owner=uuid.uuid4()
    )
    assert answer.data == []
    assert parse_group_by("day, key,day") == ["day", "key"]
