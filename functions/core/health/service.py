"""Recorded upstream health: one checker probes, every serving process reads the verdict.

A checker (``probing.check``, which the health-check flow runs step by step) calls
:func:`record` with the probe results it has (:func:`check_and_record` probes and records
without the extras); on PostgreSQL every serving process hears about it at commit
(``NOTIFY`` on :data:`CHANNEL`) and re-reads :func:`latest` (see ``watcher.py``). What a
verdict means for routing (and when it is too old to mean anything) is decided there, once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from piccolo.columns.combination import WhereRaw

from functions.core.db.engine import current_engine
from functions.core.db.notifications import notify
from functions.core.db.tables import HealthCheck
from functions.core.errors import InvalidInputError
from functions.core.health.schemas import HealthCheckOut, HealthGauges, HealthStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.llm.client import LLMClient
    from functions.core.llm.schemas import UpstreamHealth

CHANNEL = "switchboard_upstream_health"
MAX_HISTORY = 1000

_COLUMNS = (
    HealthCheck.id,
    HealthCheck.checked_at,
    HealthCheck.upstream,
    HealthCheck.status,
    HealthCheck.latency_ms,
    HealthCheck.models,
    HealthCheck.gauges,
    HealthCheck.is_simulator,
    HealthCheck.error,
)
# The newest row of each upstream: one probe of health_check_upstream_recency_idx per row.
_NEWEST_OF_ITS_UPSTREAM = WhereRaw(
    "checked_at = (SELECT MAX(newer.checked_at) FROM health_check AS newer "
    "WHERE newer.upstream = health_check.upstream)"
)


def status_of(result: UpstreamHealth) -> HealthStatus:
    """The verdict on one probe: ``down`` unless ``/health`` said 200; ``degraded`` when it
    did but the rest of the check failed or the upstream serves no model; else ``ok``."""
    if not result.healthy:
        return "down"
    if result.error is not None or not result.models:
        return "degraded"
    return "ok"


def verdict_of(result: UpstreamHealth, checked_at: datetime) -> HealthCheckOut:
    """``result`` as a verdict (not stored: :func:`record` stores)."""
    return HealthCheckOut(
        id=uuid.uuid4(),
        checked_at=checked_at,
        upstream=result.url,
        status=status_of(result),
        latency_ms=result.latency_ms,
        models=list(result.models),
        gauges=HealthGauges(
            requests_running=result.num_requests_running,
            requests_waiting=result.num_requests_waiting,
            kv_cache_usage=result.kv_cache_usage_perc,
        ),
        is_simulator=result.is_simulator,
        error=result.error,
    )


async def record(
    results: Sequence[UpstreamHealth], *, checked_at: datetime | None = None
) -> list[HealthCheckOut]:
    """Store one verdict per probed upstream and tell every serving process.

    All rows and the notification commit together (joining the caller's transaction, if
    any): a process never hears of a verdict it cannot read. ``checked_at`` defaults to now.
    """
    when = _utc(checked_at) if checked_at is not None else datetime.now(UTC)
    verdicts = [verdict_of(result, when) for result in results]
    if not verdicts:
        return []
    rows = [
        HealthCheck(
            id=verdict.id,
            checked_at=verdict.checked_at,
            upstream=verdict.upstream,
            status=verdict.status,
            latency_ms=verdict.latency_ms,
            models=verdict.models,
            gauges=msgspec.structs.asdict(verdict.gauges),
            is_simulator=verdict.is_simulator,
            error=verdict.error,
        )
        for verdict in verdicts
    ]
    async with current_engine().transaction():
        await HealthCheck.insert(*rows)
        await notify(CHANNEL, when.isoformat())
    return verdicts


async def check_and_record(llm: LLMClient) -> list[HealthCheckOut]:
    """Probe every upstream of ``llm`` once and record the verdicts: a checker's one call."""
    return await record(await llm.health())


async def latest() -> list[HealthCheckOut]:
    """The newest verdict of every upstream ever checked, by upstream URL."""
    rows = (
        await HealthCheck.select(*_COLUMNS)
        .where(_NEWEST_OF_ITS_UPSTREAM)
        .order_by(HealthCheck.upstream)
        .output(load_json=True)
    )
    newest: dict[str, HealthCheckOut] = {}
    for verdict in msgspec.convert(rows, list[HealthCheckOut]):
        # Two checks of one upstream in the same microsecond: keep one, the same every time.
        kept = newest.get(verdict.upstream)
        if kept is None or str(verdict.id) > str(kept.id):
            newest[verdict.upstream] = verdict
    return list(newest.values())


async def history(upstream: str | None = None, *, limit: int = 100) -> list[HealthCheckOut]:
    """Verdicts newest first, of one upstream or of all; at most ``limit`` (up to 1000)."""
    if not 1 <= limit <= MAX_HISTORY:
        raise InvalidInputError(
            f"limit must be between 1 and {MAX_HISTORY}", details={"field": "limit"}
        )
    query = HealthCheck.select(*_COLUMNS)
    if upstream is not None:
        query = query.where(HealthCheck.upstream == upstream)
    rows = (
        await query.order_by(HealthCheck.checked_at, HealthCheck.id, ascending=False)
        .limit(limit)
        .output(load_json=True)
    )
    return msgspec.convert(rows, list[HealthCheckOut])


async def prune(older_than: datetime) -> int:
    """Delete verdicts checked before ``older_than``; returns how many were deleted.

    The newest verdict of an upstream goes too if it is that old: a verdict that old
    steers nothing (see ``watcher.py``), and readiness then says no check is recorded.
    """
    deleted = await (
        HealthCheck.delete()
        .where(HealthCheck.checked_at < _utc(older_than))
        .returning(HealthCheck.id)
    )
    return len(deleted)


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; SQLite compares times as text, so every stored time must be UTC."""
    if moment.tzinfo is None:
        raise InvalidInputError("times must carry a time zone", details={"time": str(moment)})
    return moment.astimezone(UTC)
