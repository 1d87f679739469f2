"""The logs the stack's functions wrote during real traffic: one canonical JSON line per
request, events for upstream errors, no secrets, and no message text unless asked for."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.ops.conftest import PROMPT_MARKER, Stack
from tests.support.gateway import GatewayProcess

SEND_ROUTE = "/v1/conversations/{conversation_id}/messages"
DOOR_ROUTE = "/v1/chat/completions"
CANONICAL = {
    "event",
    "timestamp",
    "level",
    "request_id",
    "function",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "key_prefix",
    "conversation_id",
}
LLM_FACTS = {"upstream", "model", "config", "prompt_tokens", "completion_tokens", "llm_ms"}


def lines(text: str) -> list[dict[str, Any]]:
    """Every JSON line (each must be one: nothing else is printed in production)."""
    parsed = []
    for line in text.splitlines():
        if line.strip():
            parsed.append(json.loads(line))
    return parsed


def sends(records: list[dict[str, Any]], status: int) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["event"] == "request"
        and (r.get("method"), r.get("route"), r["status"]) == ("POST", SEND_ROUTE, status)
    ]


def test_each_send_has_one_canonical_line_with_what_an_operator_needs(traffic: Stack) -> None:
    records = lines(traffic.logs())
    completed = sends(records, 201) + sends(records, 200)
    assert len(completed) >= 2  # the plain send and the streamed one
    prefix = traffic.admin_secret[:12]
    for record in completed:
        missing = (CANONICAL | LLM_FACTS) - record.keys()
        assert not missing, (missing, record)
        assert record["function"] == "chat"
        assert record["key_prefix"] == prefix
        assert record["model"] == traffic.model
        assert record["upstream"] == traffic.env["SWITCHBOARD_LLM_URLS"]
        assert record["completion_tokens"] > 0
        assert 0 <= record["overhead_ms"] <= record["duration_ms"]
    request_ids = [r["request_id"] for r in records if r["event"] == "request"]
    assert len(request_ids) == len(set(request_ids)), "one line per request"


def test_each_openai_completion_has_the_same_canonical_line(traffic: Stack) -> None:
    records = lines(traffic.functions["openai"].log_text())
    completed = [
        r
        for r in records
        if r["event"] == "request"
        and (r.get("method"), r.get("route"), r["status"]) == ("POST", DOOR_ROUTE, 200)
    ]
    # By a configuration's name and by the served model, streamed or not.
    assert {r["config"] for r in completed} == {"ops", "none"}, completed
    for record in completed:
        missing = (CANONICAL | LLM_FACTS) - record.keys()
        assert not missing, (missing, record)
        assert record["function"] == "openai"
        assert record["key_prefix"] == traffic.admin_secret[:12]
        assert record["model"] == traffic.model
        assert record["upstream"] == traffic.env["SWITCHBOARD_LLM_URLS"]
        assert record["reply_status"] == "complete"
        assert record["completion_tokens"] > 0
        assert 0 <= record["overhead_ms"] <= record["duration_ms"]
    unknown = [r for r in records if r["event"] == "request" and r["status"] == 404]
    assert unknown, "the model nobody serves was answered 404 and logged"


def test_an_upstream_error_is_an_event_and_on_the_request_line(traffic: Stack) -> None:
    records = lines(traffic.logs())
    failed = [r for r in records if r["event"] == "chat.reply_failed"]
    assert failed
    assert failed[0]["code"] == "model_not_served"
    line = next(
        r for r in records if r["event"] == "request" and r.get("error_code") == "model_not_served"
    )
    assert line["request_id"] == failed[0]["request_id"]
    assert line["model"] == "unknown"


def test_no_secret_and_no_message_text_by_default(traffic: Stack) -> None:
    text = traffic.logs()
    assert PROMPT_MARKER not in text
    for secret in traffic.secrets:
        assert secret not in text
        assert secret[12:] not in text
    assert "Bearer" not in text
    password = urlsplit(traffic.env["SWITCHBOARD_DATABASE_URL"]).password
    assert password
    assert password not in text
    assert not any("prompt_text" in r or "reply_text" in r for r in lines(text))


def test_message_text_is_logged_only_when_the_setting_asks(traffic: Stack) -> None:
    env = {"SWITCHBOARD_LOG_MESSAGE_TEXT": "true", "SWITCHBOARD_LOG_FORMAT": "json"}
    with GatewayProcess(
        traffic.database_url, [traffic.env["SWITCHBOARD_LLM_URLS"]], env=env
    ) as gateway:
        headers = {"Authorization": f"Bearer {traffic.admin_secret}"}
        with httpx.Client(base_url=gateway.root_url, headers=headers, timeout=30) as client:
            conversation = client.post("/v1/conversations", json={}).json()
            reply = client.post(
                f"/v1/conversations/{conversation['id']}/messages",
                json={"content": f"Echo {PROMPT_MARKER}"},
            )
            assert reply.status_code == 201
        # The line is written once the response has gone: wait for it.
        deadline = time.monotonic() + 10
        while not sends(lines(logged := gateway.log_text()), 201):
            assert time.monotonic() < deadline, logged
            time.sleep(0.05)
    line = sends(lines(logged), 201)[0]
    assert PROMPT_MARKER in line["prompt_text"]
    assert line["reply_text"] == reply.json()["content"]
    assert traffic.admin_secret not in logged
