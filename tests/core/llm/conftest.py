"""Fixtures for the LLM client tests: real simulators over real sockets, no mocked transport.

``make_client`` builds clients exactly as production does (``build_http_client``) with
small timeouts, and adds the :class:`Faults` event hook so a test can put ``X-Sim-*``
headers on chosen requests: the simulator then misbehaves for just those.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from functions.core.llm.client import LLMClient
from functions.core.llm.schemas import ChatDone, ChatMessage, ChatRequest, StreamEvent
from functions.core.llm.transport import build_http_client
from functions.core.llm.upstreams import UpstreamPool
from functions.core.settings import Settings
from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "sim-model"
TOKENS = 8
MAX_MODEL_LEN = 256


@dataclass
class _Plan:
    headers: dict[str, str]
    times: int | None


class Faults:
    """An httpx request hook adding headers to the next ``times`` chat requests."""

    def __init__(self) -> None:
        self._plans: list[_Plan] = []

    def add(self, headers: dict[str, str], *, times: int | None = None) -> None:
        """Apply ``headers`` to coming chat requests; ``times=None`` means every one."""
        self._plans.append(_Plan(headers, times))

    async def __call__(self, request: httpx.Request) -> None:
        if not request.url.path.endswith("/chat/completions"):
            return
        for plan in self._plans:
            if plan.times == 0:
                continue
            request.headers.update(plan.headers)
            if plan.times is not None:
                plan.times -= 1
            return


def llm_settings(*urls: str, **overrides: Any) -> Settings:
    """Settings with timeouts small enough for a fast suite."""
    values: dict[str, Any] = {
        "llm_urls": urls,
        "llm_connect_timeout_s": 1.0,
        "llm_first_token_timeout_s": 5.0,
        "llm_token_timeout_s": 5.0,
        "llm_total_timeout_s": 10.0,
        "llm_max_retries": 2,
        "llm_eject_after_failures": 2,
        "llm_eject_cooldown_s": 0.3,
    }
    values.update(overrides)
    return Settings(**values)


def chat_request(content: str = "Hello there", **fields: Any) -> ChatRequest:
    fields.setdefault("model", MODEL)
    return ChatRequest(messages=[ChatMessage(role="user", content=content)], **fields)


async def sim_stats(sim: SimulatorProcess) -> dict[str, Any]:
    return await asyncio.to_thread(sim.stats)


async def wait_for_stats(
    sim: SimulatorProcess, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0
) -> dict[str, Any]:
    return await asyncio.to_thread(sim.wait_for, predicate, within)


# A stream that would run for 20 s: long enough that only an abort ends it within a test.
LONG_STREAM = {"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "400"}


async def assert_aborted(sim: SimulatorProcess, client: LLMClient) -> None:
    """The upstream stopped generating (the abort counted: the 20 s stream did not just
    end) and the slot is free."""
    stats = await wait_for_stats(sim, lambda s: s["chat_in_flight"] == 0)
    assert stats["aborted"] == 1
    assert client.stats().in_flight == 0


def connections_to(port: int) -> int:
    """How many established TCP connections this process has open to ``port``."""
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == "ESTABLISHED"
    )


async def read_stream(events: AsyncIterator[StreamEvent], texts: list[str]) -> ChatDone:
    """Consume a stream, appending each delta's text to ``texts``; return the final event."""
    async for event in events:
        if isinstance(event, ChatDone):
            return event
        texts.append(event.text)
    raise AssertionError("the stream ended without a ChatDone")


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorProcess]:
    """The shared simulator: one model, 8-token replies, a 256-token context, no delays."""
    with running_simulator(
        "--model", MODEL, "--tokens", str(TOKENS), "--max-model-len", str(MAX_MODEL_LEN)
    ) as process:
        yield process


@pytest.fixture
def fresh(sim: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator, healthy and with zeroed counters."""
    sim.set_healthy(True)
    sim.reset()
    return sim


@pytest.fixture
def faults() -> Faults:
    return Faults()


MakeClient = Callable[..., LLMClient]


@pytest.fixture
async def make_client(faults: Faults) -> AsyncIterator[MakeClient]:
    """``make_client(url, ..., **settings)``: a production-built client, closed after the test."""
    created: list[LLMClient] = []

    def make(*urls: str, **overrides: Any) -> LLMClient:
        settings = llm_settings(*urls, **overrides)
        http = build_http_client(settings)
        http.event_hooks = {"request": [faults], "response": []}
        client = LLMClient(http, settings, owns_http=True, retry_backoff_s=0.01)
        created.append(client)
        return client

    yield make
    for client in created:
        await client.aclose()


# Upstream pools on a controlled clock, for the routing rules (no network: the URLs are names).
A, B = "http://a:8000/v1", "http://b:8000/v1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_pool(*urls: str, cap: int = 4, clock: Clock | None = None) -> UpstreamPool:
    pool = UpstreamPool(
        urls or (A, B), max_in_flight=cap, eject_after=2, cooldown_s=5.0, clock=clock or Clock()
    )
    for upstream in pool.upstreams:
        pool.set_models(upstream, ["m"])
    return pool
