"""Evaluation fixtures: PostgreSQL (several connections: a run sends concurrently), the vLLM
simulator, a judge upstream, production-built LLM clients with per-item fault headers.

Runs use separate connections, so these tests do not run inside a rolled-back transaction;
the database is emptied after each one (:func:`pg`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate, LLMConfigOut
from functions.core.db.engine import use_engine
from functions.core.llm.client import LLMClient
from functions.core.llm.transport import build_http_client
from tests.conftest import truncate_all
from tests.core.evals.judge_upstream import JudgeUpstream
from tests.core.llm.conftest import llm_settings
from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "sim-model"


@pytest.fixture(scope="session")
def eval_simulator() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", MODEL, "--tokens", "8") as process:
        yield process


@pytest.fixture
async def sim(eval_simulator: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator, healthy, with zeroed counters and nothing in flight."""
    return await eval_simulator.fresh()


@pytest.fixture
async def judge() -> AsyncIterator[JudgeUpstream]:
    async with JudgeUpstream() as server:
        yield server


@pytest.fixture
async def pg(pg_engine: Engine[Any]) -> AsyncIterator[Engine[Any]]:
    """PostgreSQL without a wrapping transaction; emptied after the test."""
    use_engine(pg_engine)
    yield pg_engine
    await truncate_all(pg_engine)


@dataclass
class BodyFaults:
    """An httpx request hook: chat requests whose body contains ``marker`` get ``headers``
    (``X-Sim-Fault: 500``, say), the first ``times`` times (None: always). ``seen`` counts
    every chat request by the markers it carried."""

    rules: list[tuple[str, dict[str, str], list[int | None]]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def add(self, marker: str, headers: dict[str, str], *, times: int | None = None) -> None:
        self.rules.append((marker, headers, [times]))

    async def __call__(self, request: httpx.Request) -> None:
        if not request.url.path.endswith("/chat/completions"):
            return
        body = json.loads(request.content)
        self.bodies.append(body)
        text = json.dumps(body, ensure_ascii=False)
        for marker, headers, left in self.rules:
            if marker in text and left[0] != 0:
                request.headers.update(headers)
                if left[0] is not None:
                    left[0] -= 1
                return

    def sent_with(self, marker: str) -> int:
        return sum(marker in json.dumps(body, ensure_ascii=False) for body in self.bodies)


@pytest.fixture
def faults() -> BodyFaults:
    return BodyFaults()


class MakeChat:
    """``make_chat(url, ...)``: a ChatService over a client built as production builds it;
    ``make_chat.llm(chat)`` is that client (a run checks its models are served)."""

    def __init__(self, faults: BodyFaults) -> None:
        self._faults = faults
        self._clients: dict[int, LLMClient] = {}

    def __call__(self, *urls: str, **overrides: Any) -> ChatService:
        overrides.setdefault("llm_max_retries", 0)  # the run's own retries are under test
        settings = llm_settings(*urls, **overrides)
        http = build_http_client(settings)
        http.event_hooks = {"request": [self._faults], "response": []}
        client = LLMClient(http, settings, owns_http=True, retry_backoff_s=0.01)
        chat = ChatService(client)
        self._clients[id(chat)] = client
        return chat

    def llm(self, chat: ChatService) -> LLMClient:
        return self._clients[id(chat)]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()


@pytest.fixture
async def make_chat(faults: BodyFaults) -> AsyncIterator[MakeChat]:
    maker = MakeChat(faults)
    yield maker
    await maker.close()


async def make_config(name: str, **fields: Any) -> LLMConfigOut:
    spec = {"name": name, "model": MODEL, **fields}
    return await configs.create_config(msgspec.convert(spec, LLMConfigCreate))


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Lines as JSONL (a str is written as it is, for broken lines)."""
    text = "".join(
        (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
        for line in lines
    )
    path.write_text(text, encoding="utf-8")
    return path
