"""Routing rules that load and rotation alone would satisfy by chance, tested where they decide.

With two idle upstreams, the pool's rotation already sends a retry to the other one, so a
test of "a retry avoids the upstream it tried" must make the tried upstream the one that
rotation and load would pick; each test here fails when its rule is taken out.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from functions.core.llm.client import LLMClient
from functions.core.llm.dispatch import Dispatcher, health_of
from functions.core.llm.errors import (
    LLMError,
    LLMOverloadedError,
    LLMUnavailableError,
    ModelNotServedError,
)
from functions.core.llm.schemas import ChatDelta
from functions.core.llm.transport import build_http_client
from functions.core.llm.upstreams import UpstreamPool
from tests.core.llm.conftest import (
    LONG_STREAM,
    A,
    B,
    Clock,
    Faults,
    MakeClient,
    chat_request,
    llm_settings,
    make_pool,
    wait_for_stats,
)
from tests.core.llm.scripted_server import closed_port_url
from tests.support.simulator import SimulatorProcess

C = "http://c:8000/v1"


def test_avoid_wins_over_least_loaded() -> None:
    pool = make_pool()
    a, b = pool.upstreams
    pool.acquire("m", avoid=[a])  # b is now the busier one
    for _ in range(3):
        lease = pool.acquire("m", avoid=[a])
        assert lease.upstream is b
        pool.release(lease)
    assert pool.acquire("m").upstream is a  # without avoid, the least loaded


def test_avoided_upstreams_are_used_when_nothing_else_is_left() -> None:
    pool = make_pool(A)
    (a,) = pool.upstreams
    assert pool.acquire("m", avoid=[a]).upstream is a
    pool = make_pool(A, B)
    a, b = pool.upstreams
    assert pool.acquire("m", avoid=[a, b]).upstream in (a, b)


def test_avoid_keeps_to_the_least_loaded_among_the_untried() -> None:
    pool = make_pool(A, B, C)
    a, b, c = pool.upstreams
    for _ in range(2):
        pool.acquire("m", avoid=[a, c])
    assert b.in_flight == 2
    for _ in range(4):
        lease = pool.acquire("m", avoid=[a])
        assert lease.upstream is c
        pool.release(lease)


def test_avoid_does_not_reach_a_full_or_ejected_upstream() -> None:
    clock = Clock()
    pool = make_pool(A, B, cap=1, clock=clock)
    a, b = pool.upstreams
    pool.acquire("m", avoid=[a])
    assert b.in_flight == 1  # b is full
    assert pool.acquire("m", avoid=[a]).upstream is a  # the avoided one, not the full one
    with pytest.raises(LLMOverloadedError):
        pool.acquire("m", avoid=[a])
    pool = make_pool(A, B, clock=clock)
    a, b = pool.upstreams
    pool.record_failure(b)
    pool.record_failure(b)  # ejected for the cooldown
    assert pool.acquire("m", avoid=[a]).upstream is a
    pool.mark_down(a.id)
    with pytest.raises(LLMUnavailableError):
        pool.acquire("m", avoid=[a])


async def test_a_retry_goes_to_the_untried_upstream_even_when_it_is_busier(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    """The refused upstream stays the least loaded (the live one holds a stream); with one
    retry allowed, only avoiding the upstream already tried gets an answer."""
    dead = closed_port_url()
    client = make_client(dead, fresh.base_url, llm_max_retries=1, llm_eject_after_failures=10)
    faults.add(LONG_STREAM, times=1)
    held = client.stream_chat(chat_request(model=None))
    try:
        first = await anext(held)
        assert isinstance(first, ChatDelta)
        live = client.stats().upstreams[1]
        assert live.in_flight == 1
        for _ in range(3):
            result = await client.chat(chat_request(model=None))
            assert result.upstream_url == fresh.base_url
        assert client.stats().upstreams[0].connect_failures_total == 3
    finally:
        await held.aclose()


async def test_a_retry_on_an_untried_upstream_does_not_wait(fresh: SimulatorProcess) -> None:
    """The backoff is for trying the same upstream again; going elsewhere is immediate."""
    settings = llm_settings(closed_port_url(), fresh.base_url, llm_eject_after_failures=10)
    # A backoff no test could sit out: only skipping it answers within the bound below.
    client = LLMClient(
        build_http_client(settings),
        settings,
        owns_http=True,
        retry_backoff_s=60.0,
        retry_backoff_max_s=60.0,
    )
    loop = asyncio.get_running_loop()
    async with client:
        for _ in range(4):
            started = loop.time()
            result = await client.chat(chat_request(model=None))
            assert result.upstream_url == fresh.base_url
            assert loop.time() - started < 20.0
        assert client.stats().retries_total >= 1
        # Every attempt's slot is given back, the refused ones too.
        assert [u.in_flight for u in client.stats().upstreams] == [0, 0]


@pytest.mark.parametrize(
    ("status", "healthy"),
    [
        (200, True),
        (400, True),
        (404, True),
        (429, True),
        (499, True),
        (500, False),
        (501, True),  # vLLM lacks the feature: the request's fault, not the server's
        (502, False),
        (503, None),  # busy, retried at once: neither healthy nor failing
        (504, False),
    ],
)
def test_what_an_answer_says_of_its_upstreams_health(status: int, healthy: bool | None) -> None:
    assert health_of(status) is healthy


async def test_a_retry_on_the_same_upstream_waits_its_backoff(
    fresh: SimulatorProcess, faults: Faults
) -> None:
    """Only one upstream: the retry after its 503 waits at least half the backoff (the
    jitter's floor), so a struggling server is not hammered at once."""
    settings = llm_settings(fresh.base_url)
    http = build_http_client(settings)
    http.event_hooks = {"request": [faults], "response": []}
    client = LLMClient(http, settings, owns_http=True, retry_backoff_s=0.6, retry_backoff_max_s=0.6)
    faults.add({"X-Sim-Fault": "503"}, times=1)
    loop = asyncio.get_running_loop()
    async with client:
        started = loop.time()
        result = await client.chat(chat_request())
        assert loop.time() - started >= 0.3
    assert result.content
    assert client.stats().retries_total == 1
    assert client.stats().in_flight == 0  # the 503's slot was given back


async def test_a_failed_or_cancelled_call_gives_its_slot_back(
    make_client: MakeClient, fresh: SimulatorProcess, faults: Faults
) -> None:
    """A slot held by an attempt that ends in an error nobody retries, or in a cancellation
    before the answer's headers, goes back to the pool: else the cap fills with ghosts."""
    client = make_client(fresh.base_url, llm_max_inflight_per_upstream=1)
    faults.add({"X-Sim-Fault": "500"}, times=1)
    with pytest.raises(LLMError):
        await client.chat(chat_request())
    assert client.stats().in_flight == 0

    faults.add({"X-Sim-TTFT-Ms": "30000"}, times=1)
    waiting = asyncio.ensure_future(client.chat(chat_request()))
    await wait_for_stats(fresh, lambda s: s["chat_in_flight"] == 1)
    assert client.stats().in_flight == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert client.stats().in_flight == 0
    assert (await client.chat(chat_request())).content  # the one slot is free again


def test_marking_says_whether_anything_changed() -> None:
    """mark_down / mark_up return the upstream only when they moved it (the health flow
    logs and counts changes, not every probe)."""
    pool = make_pool()
    a, b = pool.upstreams
    assert pool.mark_down(a.id) is a
    assert pool.mark_down(a.id) is None  # already down
    assert pool.mark_up(a.id) is a
    assert pool.mark_up(a.id) is None  # already up
    pool.record_failure(b)
    assert pool.mark_up(b.id) is None  # one failure does not eject: nothing to bring back
    pool.record_failure(b)
    pool.record_failure(b)
    assert pool.stats().upstreams[1].state == "ejected"
    assert pool.mark_up(b.id) is b  # ejected, not marked down: still brought back
    assert pool.stats().upstreams[1].state == "up"
    assert pool.stats().upstreams[1].consecutive_failures == 0


def test_model_lists_are_refetched_after_their_ttl_and_soon_after_a_failure() -> None:
    clock = Clock()
    pool = UpstreamPool((A, B), max_in_flight=4, eject_after=2, cooldown_s=5.0, clock=clock)
    a, b = pool.upstreams
    assert pool.models_due() == [a, b]  # never fetched
    assert pool.is_known("m") is False  # with every list unknown
    pool.set_models(a, ["m", "n"])
    assert pool.is_known("m") is True  # b's list still unknown
    pool.models_failed(b)
    assert pool.models_due() == []
    clock.now += 1.5  # past the retry (1 s), not the TTL (30 s)
    assert pool.models_due() == [b]
    clock.now += 30.0
    assert pool.models_due() == [a, b]
    pool.mark_down(b.id)
    assert pool.models_due() == [a]  # a marked-down upstream is not fetched


def test_a_404_drops_that_model_only_and_makes_the_list_due() -> None:
    clock = Clock()
    pool = make_pool(A, clock=clock)
    (a,) = pool.upstreams
    pool.set_models(a, ["m", "n"])
    assert pool.models_due() == []
    pool.forget_model(a, "m")
    assert a.models == frozenset({"n"})
    assert pool.models_due() == [a]
    assert pool.is_known("m") is False
    with pytest.raises(ModelNotServedError):
        pool.acquire("m")


async def test_the_backoff_doubles_within_its_ceiling_and_never_passes_the_deadline() -> None:
    pool = make_pool()
    async with httpx.AsyncClient() as http:
        dispatcher = Dispatcher(
            http,
            pool,
            connect_timeout_s=1.0,
            max_retries=5,
            backoff_s=0.1,
            backoff_max_s=0.35,
            auth_headers={},
        )
        far = asyncio.get_running_loop().time() + 3600
        for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.35), (4, 0.35)]:
            for _ in range(50):
                delay = dispatcher._backoff(attempt, far)
                assert ceiling / 2 <= delay <= ceiling
        near = asyncio.get_running_loop().time() + 0.01
        assert dispatcher._backoff(3, near) <= 0.01
        assert dispatcher._backoff(3, near - 1) == 0.0
