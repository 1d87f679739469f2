"""The gateway's API in this process (ASGI, no socket), on PostgreSQL and SQLite.

Breadth without a server process: the same app ``switchboard serve`` runs, its lifespan
on the test's own loop, one simulator as the upstream. Every test checks the HTTP answer
and what the database holds. Crashes, signals, disconnects and several workers are the
real-process tests' business (``tests/functions/conftest.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.configs import service as configs
from functions.core.db.tables import Conversation, Message
from functions.core.llm.client import LLMClient
from functions.core.messages import service as messages
from tests.support.databases import sqlite_url
from tests.support.inprocess import InProcessGateway, inprocess_gateway, inprocess_settings
from tests.support.simulator import SimulatorProcess, running_simulator

MODEL = "inprocess-model"


@pytest.fixture(scope="session")
def upstream() -> Iterator[SimulatorProcess]:
    with running_simulator("--model", MODEL, "--tokens", "6") as process:
        yield process


@pytest.fixture
async def gateway(
    shared_db: Engine[Any], pg_url: str, sqlite_dir: Path, upstream: SimulatorProcess
) -> AsyncIterator[InProcessGateway]:
    """The gateway on the database under test (emptied afterwards by ``shared_db``)."""
    url = pg_url if isinstance(shared_db, PostgresEngine) else sqlite_url(sqlite_dir)
    settings = inprocess_settings(url, [upstream.base_url])
    async with LLMClient.from_settings(settings) as llm, inprocess_gateway(settings, llm=llm) as gw:
        assert gw.runtime.llm is llm
        yield gw


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], msgspec.json.decode(lines["data"])))
    return events


async def setup_chat(gateway: InProcessGateway) -> tuple[uuid.UUID, Any, dict[str, Any]]:
    """A default configuration, a chat key and one of its conversations."""
    response = await gateway.admin.post(
        "/v1/configs",
        json={
            "name": "assistant",
            "model": MODEL,
            "system_prompt": "Be brief.",
            "is_default": True,
        },
    )
    assert response.status_code == 201, response.text
    alice = await gateway.caller("alice")
    response = await alice.http.post("/v1/conversations", json={"title": "Plans"})
    assert response.status_code == 201, response.text
    return alice.key_id, alice.http, response.json()


async def test_configs_keys_and_conversations(gateway: InProcessGateway) -> None:
    created = await gateway.admin.post(
        "/v1/configs",
        json={"name": "terse", "model": MODEL, "temperature": 0.2, "is_default": True},
    )
    assert created.status_code == 201, created.text
    assert (created.json()["version"], created.json()["temperature"]) == (1, 0.2)
    alice = await gateway.caller("alice")
    refused = await alice.http.post("/v1/configs", json={"name": "mine", "model": MODEL})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"

    response = await alice.http.post("/v1/conversations", json={"title": "Plans 🗓"})
    assert response.status_code == 201, response.text
    conversation = response.json()
    assert (conversation["title"], conversation["config"]) == ("Plans 🗓", "terse")
    got = await alice.http.get(f"/v1/conversations/{conversation['id']}")
    assert got.json() == conversation

    stored = await configs.get_config("terse")
    assert (stored.id, stored.version, stored.temperature) == (
        uuid.UUID(created.json()["id"]),
        1,
        0.2,
    )
    assert [c.name for c in await configs.list_configs()] == ["terse"]
    row = await Conversation.select().where(Conversation.id == conversation["id"]).first()
    assert row is not None
    assert (row["owner_key"], row["config_name"], row["title"]) == (
        alice.key_id,
        "terse",
        "Plans 🗓",
    )


async def test_a_send_returns_the_stored_reply(gateway: InProcessGateway) -> None:
    owner, alice, conversation = await setup_chat(gateway)
    path = f"/v1/conversations/{conversation['id']}/messages"
    response = await alice.post(path, json={"content": "Hello, 세계", "temperature": 0.5})
    assert response.status_code == 201, response.text
    reply = response.json()
    assert (reply["role"], reply["status"], reply["seq"], reply["model"]) == (
        "assistant",
        "complete",
        2,
        MODEL,
    )
    assert reply["content"]
    assert reply["config"]["name"] == "assistant"
    assert reply["usage"]["completion_tokens"] == 6

    listed = (await alice.get(path)).json()
    assert [(m["role"], m["content"]) for m in listed["data"]] == [
        ("user", "Hello, 세계"),
        ("assistant", reply["content"]),
    ]
    stored = (await messages.list_messages(owner, uuid.UUID(conversation["id"]))).data
    assert [(m.seq, m.role, m.status) for m in stored] == [
        (1, "user", "complete"),
        (2, "assistant", "complete"),
    ]
    assert msgspec.to_builtins(stored[1]) == reply


async def test_a_streamed_send_is_server_sent_events(gateway: InProcessGateway) -> None:
    owner, alice, conversation = await setup_chat(gateway)
    response = await alice.post(
        f"/v1/conversations/{conversation['id']}/messages",
        json={"content": "Stream, please", "stream": True},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}
    started, done = events[0][1], events[-1][1]
    assert started["user_message"]["content"] == "Stream, please"
    assert started["assistant_message"]["status"] == "pending"
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert (done["message"]["status"], done["message"]["content"]) == ("complete", text)
    assert done["message"]["id"] == started["assistant_message"]["id"]

    stored = (await messages.list_messages(owner, uuid.UUID(conversation["id"]))).data
    assert [(m.role, m.status, m.content) for m in stored] == [
        ("user", "complete", "Stream, please"),
        ("assistant", "complete", text),
    ]


async def test_another_keys_conversation_is_not_found(gateway: InProcessGateway) -> None:
    _, alice, conversation = await setup_chat(gateway)
    bob = await gateway.caller("bob")
    path = f"/v1/conversations/{conversation['id']}"
    for method, url, body in [
        ("GET", path, None),
        ("GET", f"{path}/messages", None),
        ("POST", f"{path}/messages", {"content": "peek"}),
        ("POST", f"{path}/messages", {"content": "peek", "stream": True}),
        ("PATCH", path, {"title": "mine now"}),
        ("DELETE", path, None),
    ]:
        response = await bob.http.request(method, url, json=body)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["error"]["code"] == "not_found"

    assert (await alice.get(path)).json()["title"] == "Plans"
    assert await Message.count().where(Message.conversation == conversation["id"]) == 0
    assert (await bob.http.get("/v1/conversations")).json()["data"] == []


async def test_refused_requests_store_nothing(gateway: InProcessGateway) -> None:
    _, alice, conversation = await setup_chat(gateway)
    path = f"/v1/conversations/{conversation['id']}/messages"
    anonymous = gateway.client(None)

    no_key = await anonymous.post(path, json={"content": "hi"})
    assert (no_key.status_code, no_key.json()["error"]["code"]) == (401, "unauthorized")
    empty = await alice.post(path, json={"content": ""})
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "validation_error")
    bad_id = await alice.post("/v1/conversations/not-a-uuid/messages", json={"content": "hi"})
    assert (bad_id.status_code, bad_id.json()["error"]["code"]) == (400, "validation_error")
    assert bad_id.json()["error"]["request_id"] == bad_id.headers["x-request-id"]

    assert await Message.count().where(Message.conversation == conversation["id"]) == 0
