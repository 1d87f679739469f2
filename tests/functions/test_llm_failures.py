"""Upstream failures: the user's message stays, the reply is marked failed, the code is clear."""

from __future__ import annotations

from typing import Any

import pytest

from functions.core.db.tables import Message
from tests.functions.conftest import Api
from tests.functions.test_chat import parse_sse


async def stored(api: Api, conversation_id: str) -> list[dict[str, Any]]:
    return (
        await Message.select(
            Message.role, Message.status, Message.content, Message.error_code, Message.error_message
        )
        .where(Message.conversation == conversation_id)
        .order_by(Message.seq)
    )


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fail-model", 502, "llm_error"),
        ("hang-model", 504, "llm_timeout"),
        ("no-such-model", 404, "model_not_served"),
    ],
)
async def test_a_failed_send_keeps_the_message_and_says_why(
    api: Api, model: str, status: int, code: str
) -> None:
    await api.create_config("broken", model=model)
    conv = await api.conversation(config="broken")
    response = await api.alice.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": "please answer"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "assistant_message_id" in error["details"]
    user, reply = await stored(api, conv["id"])
    assert (user["role"], user["status"], user["content"]) == ("user", "complete", "please answer")
    assert (reply["status"], reply["error_code"]) == ("failed", code)

    # The failed reply is left out of the next prompt, and the conversation goes on.
    await api.admin.put("/v1/configs/broken", json={"model": "sim-model"})
    retry = await api.alice.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": "again"}
    )
    assert retry.status_code == 201
    assert retry.json()["config"]["version"] == 2


async def test_context_length_exceeded_gives_the_numbers(api: Api) -> None:
    await api.create_config("small", model="sim-model")  # that simulator has max-model-len 1024
    conv = await api.conversation(config="small")
    long_text = " ".join(f"word{i}" for i in range(1500))
    response = await api.alice.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": long_text}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "1024" in error["message"]
    assert error["details"]["max_context_length"] == 1024
    assert error["details"]["prompt_tokens"] > 1024
    user, reply = await stored(api, conv["id"])
    assert user["content"] == long_text
    assert reply["error_code"] == "context_length_exceeded"


async def test_a_history_window_keeps_a_long_conversation_going(api: Api) -> None:
    await api.create_config("windowed", model="sim-model", history_window=1)
    conv = await api.conversation(config="windowed")
    chunk = " ".join(f"w{i}" for i in range(400))
    for _ in range(4):  # without the window, the fourth prompt would pass 1024 tokens
        response = await api.alice.post(
            f"/v1/conversations/{conv['id']}/messages", json={"content": chunk}
        )
        assert response.status_code == 201, response.text


async def test_a_stream_cut_mid_way_ends_with_an_error_event(api: Api) -> None:
    await api.create_config("cut", model="cut-model")
    conv = await api.conversation(config="cut")
    async with api.alice.stream(
        "POST", f"/v1/conversations/{conv['id']}/messages", json={"content": "go", "stream": True}
    ) as response:
        assert response.status_code == 200
        events = parse_sse((await response.aread()).decode())
    names = [name for name, _ in events]
    assert names[0] == "message"
    assert names[-1] == "error"
    # Three tokens before the cut: one delta each, or fewer when they arrived together.
    assert 1 <= names.count("delta") <= 3
    failure = events[-1][1]
    assert failure["error"]["code"] == "llm_error"
    partial = "".join(data["text"] for name, data in events if name == "delta")
    assert failure["message"]["status"] == "failed"
    assert failure["message"]["content"] == partial
    _, reply = await stored(api, conv["id"])
    assert (reply["status"], reply["content"]) == ("failed", partial)


async def test_a_streamed_send_to_a_failing_upstream_reports_an_error_event(api: Api) -> None:
    await api.create_config("broken", model="fail-model")
    conv = await api.conversation(config="broken")
    async with api.alice.stream(
        "POST", f"/v1/conversations/{conv['id']}/messages", json={"content": "go", "stream": True}
    ) as response:
        events = parse_sse((await response.aread()).decode())
    assert [name for name, _ in events] == ["message", "error"]
    # The gateway is the session's: when other tests' failures have just ejected the
    # simulator (consecutive 5xx, outlier detection), the truthful answer is that no
    # upstream could take it; otherwise it is the upstream's own failure.
    assert events[-1][1]["error"]["code"] in ("llm_error", "llm_unavailable")
    user, reply = await stored(api, conv["id"])
    assert (user["status"], reply["status"]) == ("complete", "failed")
