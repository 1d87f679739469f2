"""A key's model access and limits hold on the door's stateful routes as on chat completions.

Responses (new, continued by ``previous_response_id``, appended to a ``conversation``,
streamed) and ``n`` > 1: a configuration the key may not use is a 403 in OpenAI's shape,
a spent request budget a 429 with ``Retry-After``, both before anything is stored (no
conversation, message or stored completion). In process (ASGI), on PostgreSQL and SQLite.
"""

from __future__ import annotations

from typing import Any

import httpx

from functions.core.db.tables import Conversation, Message
from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway


async def counts() -> tuple[int, int]:
    return await Conversation.count(), await Message.count()


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    return error


async def test_a_key_limited_to_configurations_on_responses_and_n(
    inprocess: InProcessGateway,
) -> None:
    admin = inprocess.admin
    for name in ("allowed", "other"):
        made = await admin.post("/v1/configs", json={"name": name, "model": INPROCESS_MODEL})
        assert made.status_code == 201, made.text
    created = await admin.post("/v1/keys", json={"name": "team", "allowed_configs": ["allowed"]})
    assert created.status_code == 201, created.text
    key_id, key = created.json()["id"], inprocess.client(created.json()["secret"])
    first = await key.post("/v1/responses", json={"model": "allowed", "input": "Hi"})
    assert first.status_code == 200, first.text
    conv = await key.post("/openai/v1/conversations", json={})
    assert conv.status_code == 200, conv.text
    before = await counts()
    attempts: list[dict[str, Any]] = [
        {"model": "other", "input": "Hi"},
        {"model": "other", "input": "Hi", "stream": True},
        {"model": INPROCESS_MODEL, "input": "Hi"},
        {"model": "other", "input": "Hi", "previous_response_id": first.json()["id"]},
        {"model": "other", "input": "Hi", "conversation": conv.json()["id"]},
        {"model": "other", "input": "Hi", "store": False},
    ]
    for body in attempts:
        error = refused(await key.post("/v1/responses", json=body), 403, "model_not_allowed")
        assert error["param"] == "model", body
    several = await key.post(
        "/v1/chat/completions",
        json={
            "model": "other",
            "n": 3,
            "store": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    )
    refused(several, 403, "model_not_allowed")
    assert await counts() == before
    # Taken away after the first response: continuing it is refused too.
    moved = await admin.patch(f"/v1/keys/{key_id}", json={"allowed_configs": ["other"]})
    assert moved.status_code == 200, moved.text
    again = await key.post(
        "/v1/responses",
        json={"model": "allowed", "input": "Hi", "previous_response_id": first.json()["id"]},
    )
    refused(again, 403, "model_not_allowed")
    assert await counts() == before


async def test_a_spent_request_budget_refuses_responses_before_storing(
    inprocess: InProcessGateway,
) -> None:
    made = await inprocess.admin.post(
        "/v1/configs", json={"name": "base", "model": INPROCESS_MODEL, "is_default": True}
    )
    assert made.status_code == 201, made.text
    alice = await inprocess.caller("alice")
    limits = await inprocess.admin.put(
        f"/v1/keys/{alice.key_id}/limits", json={"requests_per_minute": 1}
    )
    assert limits.status_code == 200, limits.text
    first = await alice.http.post("/v1/responses", json={"model": INPROCESS_MODEL, "input": "Hi"})
    assert first.status_code == 200, first.text
    before = await counts()
    for body in (
        {"model": INPROCESS_MODEL, "input": "Hi", "previous_response_id": first.json()["id"]},
        {"model": INPROCESS_MODEL, "input": "Hi", "stream": True},
        {"model": INPROCESS_MODEL, "input": "Hi", "store": False},
    ):
        response = await alice.http.post("/v1/responses", json=body)
        refused(response, 429, "rate_limit_exceeded")
        assert int(response.headers["retry-after"]) >= 1
    several = await alice.http.post(
        "/v1/chat/completions",
        json={
            "model": INPROCESS_MODEL,
            "n": 2,
            "store": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    )
    refused(several, 429, "rate_limit_exceeded")
    assert await counts() == before
    assert (await alice.http.get("/v1/chat/completions")).json()["data"] == []
    # Reads are not sends: the stored response is still readable under the spent budget.
    read = await alice.http.get(f"/v1/responses/{first.json()['id']}")
    assert read.status_code == 200, read.text
