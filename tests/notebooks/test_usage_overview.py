"""``usage_overview.ipynb`` top to bottom on traffic sent through the chat path: its numbers
are the usage service's for the same window."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.usage.service import usage_report
from tests.core.replay.conftest import FAILS, make_config, seed_conversation
from tests.notebooks.conftest import assert_clean_run, execute


async def test_usage_per_config_and_model(
    pg: Engine[Any], pg_url: str, chat: ChatService, jupyter_home: Path, tmp_path: Path
) -> None:
    await make_config("prod", system_prompt="Be brief.")
    await make_config("terse", system_prompt="One word.", max_tokens=4)
    owner = (await keys.create_key(ApiKeyCreate(name="team"))).id
    await seed_conversation(chat, owner, "prod", ["hello", f"{FAILS} again", "and again"])
    await seed_conversation(chat, owner, "terse", ["short?", "shorter?"])

    run = await execute(
        "usage_overview", tmp_path, jupyter_home, database_url=pg_url, days=1, bucket="hour"
    )

    assert_clean_run(run)
    values = run.values
    window = values["window"]
    report = await usage_report(
        since=datetime.fromisoformat(window["since"]),
        until=datetime.fromisoformat(window["until"]),
        bucket="hour",
    )
    assert values["totals"] == msgspec.to_builtins(report.totals)
    assert values["errors"] == msgspec.to_builtins(report.errors)
    totals = {row["config"]: row for row in values["totals"]}
    assert (totals["prod"]["replies"], totals["prod"]["failed"]) == (3, 1)
    assert (totals["terse"]["replies"], totals["terse"]["completion_tokens"]) == (2, 8)
    assert [e["error_code"] for e in values["errors"]] == ["llm_error"]
    assert len(run.data("image/png")) == 1
