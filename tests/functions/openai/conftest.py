"""The OpenAI door driven by the official ``openai`` package over a real socket.

The gateway process of ``tests/functions/conftest.py`` (PostgreSQL and SQLite, five
simulators each with one behaviour) serves the door at ``/v1``; each test gets SDK clients
for its keys, with retries off so every status reaches the test as the SDK maps it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.functions.conftest import Api
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled


def secret_of(client: httpx.AsyncClient) -> str:
    return client.headers["authorization"].partition(" ")[2]


@dataclass
class Door:
    """SDK clients of the door for alice and bob, and the chat API to check what was stored."""

    api: Api
    alice: AsyncOpenAI
    bob: AsyncOpenAI
    base_url: str
    simulators: dict[str, SimulatorProcess]

    def sdk(self, api_key: str, **options: Any) -> AsyncOpenAI:
        return AsyncOpenAI(
            base_url=self.base_url, api_key=api_key, max_retries=0, timeout=scaled(15.0), **options
        )

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """The stored messages of alice's conversation, through the chat API."""
        response = await self.api.alice.get(f"/v1/conversations/{conversation_id}/messages")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def conversations(self, client: httpx.AsyncClient | None = None) -> list[dict[str, Any]]:
        response = await (client or self.api.alice).get("/v1/conversations")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def last_request(self, model: str = "sim-model") -> dict[str, Any]:
        """The body the simulator serving ``model`` last received from the gateway."""
        stats = await self.simulators[model].stats_async()
        body: dict[str, Any] = stats["last_chat_request"]["body"]
        return body


@pytest.fixture
async def door(api: Api, simulators: dict[str, SimulatorProcess]) -> AsyncIterator[Door]:
    base_url = f"{api.base_url}/v1"
    clients = {
        name: AsyncOpenAI(
            base_url=base_url,
            api_key=secret_of(getattr(api, name)),
            max_retries=0,
            timeout=scaled(15.0),
        )
        for name in ("alice", "bob")
    }
    try:
        yield Door(api=api, base_url=base_url, simulators=simulators, **clients)
    finally:
        for client in clients.values():
            await client.close()
