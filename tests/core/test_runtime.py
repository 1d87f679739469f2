"""The runtime outside any web app: the script in docs/python.md, run as a user would run it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate
from functions.core.db.migrate import migrate
from functions.core.runtime import open_runtime
from functions.core.settings import Settings
from tests.support import process
from tests.support.databases import (
    create_postgres_database,
    drop_postgres_database,
    sqlite_url,
)
from tests.support.simulator import async_running_simulator

MODEL = "script-model"
PYTHON_PAGE = Path(__file__).parents[2] / "docs/python.md"


def python_page_example() -> str:
    text = PYTHON_PAGE.read_text()
    marker = text.index("<!-- runtime-example")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block is not None
    return block.group(1)


@pytest.fixture(params=["postgres", "sqlite"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of its own, migrated, with a default configuration (as after make dev)."""
    url = (
        await create_postgres_database("switchboard_runtime")
        if request.param == "postgres"
        else sqlite_url(tmp_path)
    )
    async with open_runtime(Settings(database_url=url), use_llm=False) as rt:
        await migrate(rt.engine)
        await configs.create_config(LLMConfigCreate(name="default", model=MODEL, is_default=True))
    yield url
    if request.param == "postgres":
        await drop_postgres_database(url)


async def test_the_documented_script_sends_and_stores_a_message(
    database_url: str, tmp_path: Path
) -> None:
    script = python_page_example()
    assert len(script.strip().splitlines()) <= 25  # short enough to read at a glance
    url = database_url
    async with async_running_simulator("--tokens", "5", "--model", MODEL) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env |= {
            "SWITCHBOARD_DATABASE_URL": url,
            "SWITCHBOARD_LLM_URLS": sim.base_url,
            "SWITCHBOARD_LOG_FORMAT": "json",
        }
        child = await process.start_async(
            sys.executable,
            "-c",
            script,
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(child.communicate(), process.scaled(60))
        finally:
            process.kill_group(child.pid)
    assert child.returncode == 0, err.decode()
    conversation_id, status, content = out.decode().strip().split(" ", 2)
    assert status == "complete"
    assert content

    # What the script stored reads back through the same services.
    async with open_runtime(Settings(database_url=url), use_llm=False) as rt:
        rows = await rt.engine.run_ddl(
            f"SELECT role, status, content FROM message WHERE conversation = '{conversation_id}' "
            "ORDER BY seq"
        )
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[1]["content"] == content
