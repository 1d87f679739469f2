"""Simulators shared by the contract tests: one default (chat) process for the session, two
embedding models (``--runner pooling``, matryoshka or not) started when a test needs them,
and a factory for the few tests that need other flags. Everything talks real HTTP over
sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "sim-model"
OTHER_MODEL = "other-model"
MAX_MODEL_LEN = 512
TOKENS = 12
EMBED_MODEL = "sim-embed"
EMBED_DIM = 64
EMBED_CONTEXT = 32


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorProcess]:
    """The shared simulator: two models, a short context, 12-token replies, no delays."""
    with running_simulator(
        "--model",
        MODEL,
        "--model",
        OTHER_MODEL,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--tokens",
        str(TOKENS),
    ) as process:
        yield process


@pytest.fixture(scope="session")
def embedder() -> Iterator[SimulatorProcess]:
    """A matryoshka embedding model accepting 16 or 32 dimensions."""
    with running_simulator(
        "--runner",
        "pooling",
        "--model",
        EMBED_MODEL,
        "--embedding-dim",
        str(EMBED_DIM),
        "--matryoshka",
        "--matryoshka-dimension",
        "16",
        "--matryoshka-dimension",
        "32",
        "--max-model-len",
        str(EMBED_CONTEXT),
        "--record-requests",
    ) as process:
        yield process


@pytest.fixture(scope="session")
def plain_embedder() -> Iterator[SimulatorProcess]:
    """An embedding model that is not matryoshka."""
    with running_simulator("--runner", "pooling", "--model", EMBED_MODEL) as process:
        yield process


@pytest.fixture
async def client(sim: SimulatorProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.root_url, timeout=10.0) as http:
        yield http


@pytest.fixture
def fresh(sim: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator with its counters zeroed and its engine alive."""
    sim.set_healthy(True)
    sim.reset()
    return sim


def chat_body(content: str = "Hello there, how are you?", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def parse_sse(raw: bytes) -> list[Any]:
    """Split an SSE body into its ``data:`` payloads, asserting vLLM's exact framing."""
    assert raw.endswith(b"\n\n"), raw[-40:]
    events = raw[:-2].split(b"\n\n")
    payloads: list[Any] = []
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event, event
        data = event[len(b"data: ") :]
        payloads.append("[DONE]" if data == b"[DONE]" else msgspec.json.decode(data))
    return payloads
