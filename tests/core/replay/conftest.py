"""Replay fixtures: the vLLM simulator (replies are a function of the model, the prompt and
the sampling, so the same request always gets the same reply), LLM clients built as
production builds them with per-request faults (``BodyFaults``), and conversations stored
through the send path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.schemas import SendRequest
from functions.core.chat.service import ChatService
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate, LLMConfigOut
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.engine import use_engine
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMError
from functions.core.llm.transport import build_http_client
from functions.core.messages.schemas import Turn
from functions.core.replay.service import ReplayService
from tests.conftest import truncate_all
from tests.core.evals.conftest import BodyFaults
from tests.core.llm.conftest import llm_settings
from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "sim-model"
FAILS = "FAILS-ONCE"


@pytest.fixture(scope="session")
def replay_simulator() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", MODEL, "--tokens", "12") as process:
        yield process


@pytest.fixture
async def sim(replay_simulator: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator, healthy, with zeroed counters and nothing in flight."""
    return await replay_simulator.fresh()


@pytest.fixture
async def pg(pg_engine: Engine[Any]) -> AsyncIterator[Engine[Any]]:
    """PostgreSQL without a wrapping transaction (replays run concurrently); emptied after."""
    use_engine(pg_engine)
    yield pg_engine
    use_engine(pg_engine)
    await truncate_all(pg_engine)


@pytest.fixture
def faults() -> BodyFaults:
    """Chat requests whose body holds ``FAILS-ONCE`` get a 500 the first time only."""
    rules = BodyFaults()
    rules.add(FAILS, {"X-Sim-Fault": "500"}, times=1)
    return rules


@pytest.fixture
async def llm(sim: SimulatorProcess, faults: BodyFaults) -> AsyncIterator[LLMClient]:
    settings = llm_settings(sim.base_url, llm_max_retries=0)
    http = build_http_client(settings)
    http.event_hooks = {"request": [faults], "response": []}
    client = LLMClient(http, settings, owns_http=True)
    yield client
    await client.aclose()


@pytest.fixture
def chat(llm: LLMClient) -> ChatService:
    return ChatService(llm)


@pytest.fixture
def replayer(llm: LLMClient, chat: ChatService) -> ReplayService:
    return ReplayService(llm, chat)


async def make_config(name: str, **fields: Any) -> LLMConfigOut:
    spec = {"name": name, "model": MODEL, **fields}
    return await configs.create_config(msgspec.convert(spec, LLMConfigCreate))


async def seed_conversation(
    chat: ChatService, owner: uuid.UUID, config: str, texts: list[str], title: str = "seeded"
) -> uuid.UUID:
    """A conversation on ``config`` with one exchange per text (a text holding
    ``FAILS-ONCE`` gets a failed reply)."""
    created = await conversations.create_conversation(
        owner, ConversationCreate(title=title, config=config, metadata={"team": "support"})
    )
    for text in texts:
        request = SendRequest(
            access=UNRESTRICTED,
            owner=owner,
            conversation_id=created.id,
            turns=[Turn(role="user", content=text)],
        )
        try:
            await chat.send(request)
        except LLMError:
            assert FAILS in text
    return created.id
