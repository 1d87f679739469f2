"""Fixtures for the send path: a real simulator, production-built LLM clients, parties.

``ChatService`` is driven directly, as every door drives it. The upstream is the vLLM
simulator on a real socket (per-request ``X-Sim-*`` headers through :class:`Faults`), or,
for byte-exact misbehaviour the simulator does not offer, a :class:`ScriptedUpstream`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from functions.core.chat.schemas import SendRequest
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate, LLMConfigOut
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.sql import fetch
from functions.core.keys import service as keys
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.llm.client import LLMClient
from functions.core.llm.transport import build_http_client
from functions.core.messages import service as messages
from functions.core.messages.schemas import MessageOut, Turn
from tests.core.llm.conftest import Faults, llm_settings
from tests.core.llm.scripted_server import RawHttpServer, http_response
from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "sim-model"
# A stream that would run for 20 s: long enough that only an abort ends it within a test.
LONG_STREAM = {"X-Sim-ITL-Ms": "50", "X-Sim-Tokens": "400"}


@pytest.fixture(scope="session")
def chat_simulator() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", MODEL, "--tokens", "8") as process:
        yield process


@pytest.fixture
async def sim(chat_simulator: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator, healthy, with zeroed counters and nothing in flight."""
    return await chat_simulator.fresh()


@pytest.fixture
def faults() -> Faults:
    return Faults()


MakeClient = Callable[..., LLMClient]


@pytest.fixture
async def make_client(faults: Faults) -> AsyncIterator[MakeClient]:
    """``make_client(url)``: a client built as production builds it, closed after the test."""
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


@dataclass(frozen=True)
class Party:
    """A key and one of its conversations, named by a configuration on ``MODEL``."""

    owner: uuid.UUID
    conversation_id: uuid.UUID
    config: LLMConfigOut

    def says(self, *texts: str, **fields: Any) -> SendRequest:
        """A chat send: one user turn per text (``fields`` may name another owner)."""
        fields = {"owner": self.owner, "conversation_id": self.conversation_id, **fields}
        return SendRequest(
            access=UNRESTRICTED, turns=[Turn(role="user", content=text) for text in texts], **fields
        )


async def new_key(name: str = "caller") -> uuid.UUID:
    return (await keys.create_key(ApiKeyCreate(name=name))).id


async def new_party(**config: Any) -> Party:
    owner = await new_key("owner")
    spec = {"name": f"c{uuid.uuid4().hex[:8]}", "model": MODEL, **config}
    created = await configs.create_config(msgspec.convert(spec, LLMConfigCreate))
    conversation = await conversations.create_conversation(
        owner, ConversationCreate(config=created.name)
    )
    return Party(owner=owner, conversation_id=conversation.id, config=created)


async def stored(owner: uuid.UUID, conversation_id: uuid.UUID) -> list[MessageOut]:
    """The conversation's messages as the database holds them, in order."""
    return (await messages.list_messages(owner, conversation_id)).data


async def stored_of(party: Party) -> list[MessageOut]:
    return await stored(party.owner, party.conversation_id)


async def message_row(message_id: uuid.UUID) -> dict[str, Any]:
    """The raw ``message`` row (what ``MessageOut`` would hide: the config id column)."""
    rows = await fetch("SELECT * FROM message WHERE id = {}", message_id)
    assert len(rows) == 1
    return rows[0]


def models_body(model: str) -> bytes:
    card = {"id": model, "object": "model", "owned_by": "vllm", "root": model}
    return msgspec.json.encode({"object": "list", "data": [card]})


class ScriptedUpstream(RawHttpServer):
    """A real HTTP server that lists one model and answers every chat request with the
    same raw bytes (``ScriptedServer`` answers everything alike, so a client routing by
    model would never reach its script)."""

    def __init__(self, chat_response: bytes, model: str = MODEL) -> None:
        super().__init__()
        self.chat_response = chat_response
        self.model = model
        self.chat_bodies: list[bytes] = []

    def answer(self, head: bytes, path: bytes, body: bytes) -> bytes | None:
        if path.endswith(b"/models"):
            return http_response(200, models_body(self.model))
        self.chat_bodies.append(body)
        return self.chat_response
