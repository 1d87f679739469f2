"""The upstream pool's routing and passive/active health rules, on a controlled clock."""

from __future__ import annotations

import pytest

from functions.core.llm.errors import (
    LLMOverloadedError,
    LLMUnavailableError,
    ModelNotServedError,
)
from functions.core.llm.upstreams import Lease, UpstreamPool, redact_url
from tests.core.llm.conftest import A, Clock, make_pool


def test_least_in_flight_first_and_ties_rotate() -> None:
    pool = make_pool()
    first = pool.acquire("m")
    second = pool.acquire("m")
    assert first.upstream is not second.upstream
    pool.release(first)
    assert pool.acquire("m").upstream is first.upstream  # now the least loaded
    picks = []
    for _ in range(4):
        lease = pool.acquire(None)
        picks.append(lease.upstream.id)
        pool.release(lease)
    assert set(picks) == {"a:8000", "b:8000"}


def test_avoid_prefers_an_untried_upstream() -> None:
    pool = make_pool()
    tried = pool.acquire("m").upstream
    assert pool.acquire("m", avoid=[tried]).upstream is not tried


def test_cap_then_overloaded() -> None:
    pool = make_pool(A, cap=1)
    pool.acquire("m")
    with pytest.raises(LLMOverloadedError) as info:
        pool.acquire("m")
    assert info.value.details["in_flight"] == {"a:8000": 1}
    assert pool.stats().overloaded_total == 1


def test_model_routing_and_unknown_model() -> None:
    pool = make_pool()
    pool.set_models(pool.upstreams[1], ["other"])
    assert pool.acquire("other").upstream.id == "b:8000"
    assert pool.acquire("m").upstream.id == "a:8000"
    with pytest.raises(ModelNotServedError) as info:
        pool.acquire("missing")
    assert info.value.details["known_models"] == ["m", "other"]


def test_unknown_lists_make_a_missing_model_unavailable_not_unknown() -> None:
    pool = UpstreamPool((A,), max_in_flight=1, eject_after=1, cooldown_s=1.0)
    with pytest.raises(LLMUnavailableError):
        pool.acquire("m")
    assert pool.acquire(None).upstream.id == "a:8000"


def test_ejection_cooldown_and_half_open_trial() -> None:
    clock = Clock()
    pool = make_pool(A, clock=clock)
    upstream = pool.upstreams[0]
    assert pool.record_connect_failure(upstream) is False
    assert pool.record_connect_failure(upstream) is True
    assert pool.stats().upstreams[0].state == "ejected"
    with pytest.raises(LLMUnavailableError):
        pool.acquire("m")

    clock.now += 5.0
    assert pool.stats().upstreams[0].state == "half_open"
    trial = pool.acquire("m")
    assert trial.trial
    with pytest.raises(LLMUnavailableError):  # one trial at a time
        pool.acquire("m")
    pool.record_connect_failure(upstream)  # the trial failed: a fresh cooldown
    pool.release(trial)
    assert pool.stats().upstreams[0].state == "ejected"

    clock.now += 5.0
    trial = pool.acquire("m")
    pool.record_response(upstream)
    pool.release(trial)
    assert pool.stats().upstreams[0].state == "up"
    assert pool.stats().upstreams[0].ejections_total == 2


def test_a_response_resets_the_failure_count() -> None:
    pool = make_pool(A)
    upstream = pool.upstreams[0]
    pool.record_connect_failure(upstream)
    pool.record_response(upstream)
    assert pool.record_connect_failure(upstream) is False


def test_mark_down_and_up_by_url_root_or_id() -> None:
    pool = make_pool()
    pool.mark_down("http://a:8000")
    leases: list[Lease] = [pool.acquire("m") for _ in range(3)]
    assert {lease.upstream.id for lease in leases} == {"b:8000"}
    assert pool.stats().upstreams[0].state == "down"
    pool.mark_up("a:8000")
    assert pool.acquire("m").upstream.id == "a:8000"
    with pytest.raises(KeyError):
        pool.mark_down("http://nowhere/v1")


def test_stats_snapshot() -> None:
    pool = make_pool(cap=3)
    pool.acquire("m")
    stats = pool.stats()
    assert (stats.in_flight, stats.max_in_flight) == (1, 6)
    assert [u.models for u in stats.upstreams] == [["m"], ["m"]]


def test_ids_and_urls_hide_credentials() -> None:
    assert redact_url("http://user:pw@host:1/v1") == "http://host:1/v1"
    pool = UpstreamPool(
        ("http://user:pw@h:1/v1", "http://h:1/v1"), max_in_flight=1, eject_after=1, cooldown_s=1
    )
    assert [u.id for u in pool.upstreams] == ["h:1", "h:1#2"]
    assert "pw" not in repr(pool.stats())
