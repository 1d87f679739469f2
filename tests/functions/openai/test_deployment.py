"""The OpenAI door deployed alone (``switchboard serve --function openai``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI

from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.migrate import migrate
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled


@pytest.fixture
async def fresh_db() -> AsyncIterator[str]:
    url = await create_postgres_database("switchboard_door_alone")
    use_engine(engine_from_url(url))
    await migrate(engine_from_url(url))
    yield url
    await drop_postgres_database(url)


async def test_the_door_runs_alone(fresh_db: str, simulators: dict[str, SimulatorProcess]) -> None:
    secret = (await keys.create_key(ApiKeyCreate(name="a", scopes=["chat"]))).secret
    with GatewayProcess(fresh_db, [simulators["sim-model"].base_url], function="openai") as app:
        client = AsyncOpenAI(
            base_url=f"{app.root_url}/v1", api_key=secret, max_retries=0, timeout=scaled(15.0)
        )
        try:
            reply = await client.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "Hi"}]
            )
            assert reply.choices[0].message.content
            assert [model.id for model in (await client.models.list()).data] == ["sim-model"]
            # The chat API is another function: not served here, and answered in OpenAI's
            # shape (the path is under the door's /v1).
            with pytest.raises(openai.NotFoundError):
                await client.get("/conversations", cast_to=object)
        finally:
            await client.close()
