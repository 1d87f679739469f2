"""``usage_overview.ipynb`` top to bottom on traffic sent through the chat path: its numbers
are the usage service's for the same window, its window fits the data, and its latency
lines are each configuration's own percentiles (two configurations share one model here:
adding their percentiles per model would show twice the latency)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.service import ChatService
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.usage.service import usage_report
from tests.core.replay.conftest import FAILS, MODEL, make_config, seed_conversation
from tests.notebooks.conftest import assert_clean_run, execute


async def test_usage_per_config_and_model(
    pg: Engine[Any], pg_url: str, chat: ChatService, jupyter_home: Path, tmp_path: Path
) -> None:
    await make_config("prod", system_prompt="Be brief.")
    await make_config("terse", system_prompt="One word.", max_tokens=4)
    owner = (await keys.create_key(ApiKeyCreate(name="team"))).id
    await seed_conversation(chat, owner, "prod", ["hello", f"{FAILS} again", "and again"])
    await seed_conversation(chat, owner, "terse", ["short?", "shorter?"])

    run = await execute("usage_overview", tmp_path, jupyter_home, database_url=pg_url)

    assert_clean_run(run)
    values = run.values
    window = values["window"]
    since, until = datetime.fromisoformat(window["since"]), datetime.fromisoformat(window["until"])
    # Minutes of traffic: a window of about twelve hours (not the last pixel of a week).
    assert timedelta(hours=11) <= until - since <= timedelta(hours=13)
    assert until <= datetime.now(UTC)
    report = await usage_report(since=since, until=until, bucket="hour")
    assert values["totals"] == msgspec.to_builtins(report.totals)
    assert values["errors"] == msgspec.to_builtins(report.errors)
    totals = {row["config"]: row for row in values["totals"]}
    assert (totals["prod"]["replies"], totals["prod"]["failed"]) == (3, 1)
    assert (totals["terse"]["replies"], totals["terse"]["completion_tokens"]) == (2, 8)
    assert [e["error_code"] for e in values["errors"]] == ["llm_error"]
    assert len(run.data("image/png")) == 1

    # Each line is one configuration's own percentile, bucket by bucket.
    expected: dict[str, dict[str, float]] = {}
    for row in report.rows:
        for stat in ("p50", "p95"):
            value = getattr(row, f"latency_{stat}_ms")
            line = expected.setdefault(f"{row.config} ({row.model}) {stat}", {})
            if value is not None:
                line[str(row.start)] = value
    assert {row.model for row in report.rows} == {MODEL}  # prod and terse share the model
    assert values["latency_series"].keys() == expected.keys()
    for name, points in expected.items():
        assert values["latency_series"][name] == pytest.approx(points), name
