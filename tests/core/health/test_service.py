"""Recorded health on PostgreSQL and SQLite: record, latest per upstream, history, prune."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.errors import InvalidInputError
from functions.core.health import service
from functions.core.health.schemas import HealthGauges
from tests.core.health.support import probed

A = "http://10.0.0.1:8000/v1"
B = "http://10.0.0.2:8000/v1"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


async def test_record_stores_one_verdict_per_upstream(db: Engine[Any]) -> None:
    recorded = await service.record(
        [probed(A), probed(B, healthy=False)],
        checked_at=T0.astimezone(timezone(timedelta(hours=2))),
    )
    assert [(v.upstream, v.status) for v in recorded] == [(A, "ok"), (B, "down")]
    assert all(v.checked_at == T0 for v in recorded)

    stored = {v.upstream: v for v in await service.latest()}
    assert stored[A] == recorded[0]
    assert stored[A].gauges == HealthGauges(
        requests_running=3.0, requests_waiting=1.0, kv_cache_usage=0.25
    )
    assert stored[A].models == ["m"]
    assert stored[A].latency_ms == 4.5
    assert stored[B] == recorded[1]
    assert stored[B].error == "/health: ConnectError: refused"
    assert stored[B].gauges == HealthGauges()


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (probed(A), "ok"),
        (probed(A, error="/v1/models: timed out", models=[]), "degraded"),
        (probed(A, models=[]), "degraded"),
        (probed(A, healthy=False), "down"),
    ],
)
def test_status_of_a_probe(result: Any, status: str) -> None:
    assert service.status_of(result) == status


async def test_latest_is_the_newest_verdict_of_each_upstream(db: Engine[Any]) -> None:
    assert await service.latest() == []
    await service.record([probed(A), probed(B)], checked_at=T0)
    await service.record([probed(A, healthy=False)], checked_at=T0 + timedelta(minutes=1))
    await service.record([probed(A)], checked_at=T0 - timedelta(minutes=1))  # late, older

    latest = await service.latest()
    assert [(v.upstream, v.status, v.checked_at) for v in latest] == [
        (A, "down", T0 + timedelta(minutes=1)),
        (B, "ok", T0),
    ]


async def test_history_is_newest_first_and_filters_by_upstream(db: Engine[Any]) -> None:
    for minute in range(3):
        await service.record(
            [probed(A), probed(B, healthy=minute != 1)],
            checked_at=T0 + timedelta(minutes=minute),
        )

    everything = await service.history()
    assert [v.checked_at for v in everything] == sorted(
        (v.checked_at for v in everything), reverse=True
    )
    assert len(everything) == 6
    of_b = await service.history(B)
    assert [(v.status, v.checked_at) for v in of_b] == [
        ("ok", T0 + timedelta(minutes=2)),
        ("down", T0 + timedelta(minutes=1)),
        ("ok", T0),
    ]
    assert [v.checked_at for v in await service.history(A, limit=2)] == [
        T0 + timedelta(minutes=2),
        T0 + timedelta(minutes=1),
    ]
    with pytest.raises(InvalidInputError):
        await service.history(limit=0)


async def test_prune_deletes_what_is_older_and_counts_it(db: Engine[Any]) -> None:
    for minute in range(4):
        await service.record([probed(A), probed(B)], checked_at=T0 + timedelta(minutes=minute))

    assert await service.prune(T0 + timedelta(minutes=2)) == 4
    assert len(await service.history()) == 4
    assert await service.prune(T0 + timedelta(minutes=2)) == 0
    # A cut-off in another time zone means the same instant.
    assert (
        await service.prune((T0 + timedelta(minutes=3)).astimezone(timezone(timedelta(hours=-5))))
        == 2
    )
    assert {v.checked_at for v in await service.latest()} == {T0 + timedelta(minutes=3)}
    with pytest.raises(InvalidInputError):
        await service.prune(datetime(2026, 1, 1))  # naive: refused


async def test_recording_nothing_stores_nothing(db: Engine[Any]) -> None:
    assert await service.record([]) == []
    assert await service.history() == []


async def test_check_and_record_defaults_to_now(db: Engine[Any]) -> None:
    before = datetime.now(UTC)
    (verdict,) = await service.record([probed(A, is_simulator=True)])
    assert before <= verdict.checked_at <= datetime.now(UTC)
    (stored,) = await service.latest()
    assert stored.is_simulator
    assert stored.checked_at == verdict.checked_at
