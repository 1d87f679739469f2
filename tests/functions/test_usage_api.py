"""``GET /v1/usage`` through the gateway (in-process, PostgreSQL and SQLite): an admin sees
every key's usage, a chat key its own; the numbers are the stored replies'; hostile
parameters are a 400 naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from functions.core.db.sql import fetch
from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway


def chat(content: str) -> dict[str, Any]:
    return {"model": INPROCESS_MODEL, "messages": [{"role": "user", "content": content}]}


def hour(at: datetime) -> str:
    return at.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_an_admin_sees_every_key_and_a_key_its_own(inprocess: InProcessGateway) -> None:
    alice, bob = await inprocess.caller("alice"), await inprocess.caller("bob")
    for caller, sends in ((alice, 3), (bob, 1)):
        for i in range(sends):
            answer = await caller.http.post("/v1/chat/completions", json=chat(f"q{i}"))
            assert answer.status_code == 200, answer.text
    now = datetime.now(UTC)
    window = {"from": hour(now - timedelta(hours=1)), "to": hour(now + timedelta(hours=1))}

    everyone = await inprocess.admin.get("/v1/usage", params={**window, "group_by": "key"})
    assert everyone.status_code == 200, everyone.text
    rows = {row["key_name"]: row for row in everyone.json()["data"]}
    assert set(rows) == {"alice", "bob"}
    stored = await fetch(
        "SELECT c.owner_key, m.prompt_tokens, m.completion_tokens FROM message m "
        "JOIN conversation c ON c.id = m.conversation WHERE m.role = 'assistant'"
    )
    for caller, name in ((alice, "alice"), (bob, "bob")):
        mine = [row for row in stored if str(row["owner_key"]) == str(caller.key_id)]
        row = rows[name]
        assert row["key_id"] == str(caller.key_id)
        assert (row["requests"], row["complete"], row["failed"], row["cancelled"]) == (
            len(mine),
            len(mine),
            0,
            0,
        )
        assert row["prompt_tokens"] == sum(r["prompt_tokens"] for r in mine)
        assert row["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
        assert row["latency_ms"]["p50"] > 0
        assert row["errors"] == {}
    body = everyone.json()
    assert (body["from"], body["to"], body["group_by"]) == (
        window["from"].replace("Z", "Z"),
        window["to"],
        ["key"],
    )

    # A chat key: its own usage only, whatever it groups by.
    own = await alice.http.get("/v1/usage", params={**window, "group_by": "key,model,hour"})
    assert own.status_code == 200, own.text
    assert {row["key_name"] for row in own.json()["data"]} == {"alice"}
    assert sum(row["requests"] for row in own.json()["data"]) == 3
    totals = await bob.http.get("/v1/usage", params=window)
    [total] = totals.json()["data"]
    assert total["requests"] == 1
    assert total["key_id"] is None  # not grouped by key
    assert total["model"] is None

    # No key, no usage.
    assert (await inprocess.client(None).get("/v1/usage")).status_code == 401


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("from=2026-12-01T00:30:00Z", "from"),  # not a whole hour
        ("from=2026-12-01T00:00:00", "from"),  # no time zone
        ("to=2026-12-01T00:00:00Z&from=2026-12-02T00:00:00Z", "to"),  # to before from
        ("from=2020-01-01&to=2026-01-01", "from"),  # too long
        ("from=2026-11-01&to=2026-12-15&group_by=hour", "from"),  # too long by hour
        ("group_by=key,secret", "group_by"),
        ("group_by=" + "key," * 60, "group_by"),
        ("from=%00%00%00%00%00%00%00%00%00%00", "from"),
        ("from=" + "9" * 41, "from"),
        ("limti=1", "limti"),
        ("from=2026-12-01&from=2026-12-02", "from"),
    ],
)
async def test_hostile_parameters_are_a_400_naming_them(
    inprocess: InProcessGateway, query: str, field: str
) -> None:
    answer = await inprocess.admin.get(f"/v1/usage?{query}")
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert field in answer.text
    assert "Traceback" not in answer.text
    assert "SELECT" not in answer.text
