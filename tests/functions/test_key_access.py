"""A key's expiry and the configurations and models it may use, through the API and the
OpenAI door, on PostgreSQL and SQLite (in-process gateway, one simulator)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from functions.core.db.sql import fetch
from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway


async def restricted(
    gateway: InProcessGateway, name: str, **access: Any
) -> tuple[str, httpx.AsyncClient]:
    """A chat key made with ``access`` (the create body's fields), and a client for it."""
    created = await gateway.admin.post("/v1/keys", json={"name": name, **access})
    assert created.status_code == 201, created.text
    body = created.json()
    for field, value in access.items():
        if field == "expires_at":
            assert datetime.fromisoformat(body[field]) == datetime.fromisoformat(value)
        else:
            assert body[field] == value, field
    return body["id"], gateway.client(body["secret"])


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def stored_messages() -> int:
    [row] = await fetch("SELECT count(*) AS n FROM message")
    return int(row["n"])


async def test_a_key_limited_to_configurations(inprocess: InProcessGateway) -> None:
    admin = inprocess.admin
    for name in ("allowed", "other"):
        made = await admin.post("/v1/configs", json={"name": name, "model": INPROCESS_MODEL})
        assert made.status_code == 201, made.text
    _, key = await restricted(inprocess, "team", allowed_configs=["allowed"])

    # Its model list holds what it may use, nothing else; the rest is a 404 as unknown.
    listed = await key.get("/v1/models")
    assert sorted(model["id"] for model in listed.json()["data"]) == ["allowed", "allowed@1"]
    assert (await key.get("/v1/models/allowed@1")).status_code == 200
    for hidden in ("other", "other@1", INPROCESS_MODEL):
        answer = await key.get(f"/v1/models/{hidden}")
        assert answer.status_code == 404, hidden
    everything = await admin.get("/v1/models")
    assert {"other", INPROCESS_MODEL} <= {model["id"] for model in everything.json()["data"]}

    ok = await key.post("/v1/chat/completions", json=chat("allowed"))
    assert ok.status_code == 200, ok.text
    before = await stored_messages()
    # Another configuration, a bare model, and one that does not exist: 403 alike, in
    # OpenAI's shape, before anything is stored.
    for model in ("other", INPROCESS_MODEL, "no-such-config"):
        refused = await key.post("/v1/chat/completions", json=chat(model))
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "permission_error",
            "model_not_allowed",
            "model",
        )
        assert "may not use" in error["message"]
        legacy = await key.post(
            "/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}
        )
        assert legacy.status_code == 403, legacy.text
    embedded = await key.post("/v1/embeddings", json={"model": INPROCESS_MODEL, "input": "x"})
    assert embedded.status_code == 403, embedded.text
    assert await stored_messages() == before

    # The chat API: a conversation on another configuration cannot be sent to (its shape).
    conversation = await key.post("/v1/conversations", json={"config": "other"})
    assert conversation.status_code == 201, conversation.text
    sent = await key.post(
        f"/v1/conversations/{conversation.json()['id']}/messages", json={"content": "hi"}
    )
    assert sent.status_code == 403, sent.text
    assert sent.json()["error"]["code"] == "model_not_allowed"
    assert "configuration 'other'" in sent.json()["error"]["message"]
    assert await stored_messages() == before


async def test_a_key_limited_to_models_and_changed_by_an_admin(
    inprocess: InProcessGateway,
) -> None:
    admin = inprocess.admin
    for name, model in (("same", INPROCESS_MODEL), ("elsewhere", "another-model")):
        made = await admin.post("/v1/configs", json={"name": name, "model": model})
        assert made.status_code == 201, made.text
    key_id, key = await restricted(inprocess, "modeller", allowed_models=[INPROCESS_MODEL])

    listed = {model["id"] for model in (await key.get("/v1/models")).json()["data"]}
    assert listed == {"same", "same@1", INPROCESS_MODEL}
    assert (await key.post("/v1/chat/completions", json=chat(INPROCESS_MODEL))).status_code == 200
    assert (await key.post("/v1/chat/completions", json=chat("same"))).status_code == 200
    assert (await key.post("/v1/chat/completions", json=chat("elsewhere"))).status_code == 403

    # An admin narrows it: the next request is judged by the new list.
    changed = await admin.patch(f"/v1/keys/{key_id}", json={"allowed_models": ["another-model"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["allowed_models"] == ["another-model"]
    assert (await key.post("/v1/chat/completions", json=chat("same"))).status_code == 403
    listed = {model["id"] for model in (await key.get("/v1/models")).json()["data"]}
    assert listed == {"elsewhere", "elsewhere@1"}
    # null: any model again.
    cleared = await admin.patch(f"/v1/keys/{key_id}", json={"allowed_models": None})
    assert cleared.json()["allowed_models"] is None
    assert (await key.post("/v1/chat/completions", json=chat("same"))).status_code == 200

    # Only an admin changes a key; a bad body is a 400 naming the field.
    assert (await key.patch(f"/v1/keys/{key_id}", json={"allowed_models": None})).status_code == 403
    for body, field in (
        ({"allowed_modles": []}, "allowed_modles"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no time zone
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),  # past
        ({"allowed_models": ["m"] * 101}, "allowed_models"),
        ({"allowed_models": [""]}, "allowed_models"),
        ({"allowed_configs": ["x" * 101]}, "allowed_configs"),
        ({"allowed_configs": ["a\u0000"]}, "allowed_configs"),
    ):
        refused = await admin.patch(f"/v1/keys/{key_id}", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert field in refused.json()["error"]["details"].get("field", ""), refused.text
    unknown = await admin.patch(
        "/v1/keys/00000000-0000-0000-0000-000000000001", json={"allowed_models": None}
    )
    assert unknown.status_code == 404


async def test_an_expired_key_is_a_401_everywhere(inprocess: InProcessGateway) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    key_id, key = await restricted(inprocess, "temp", expires_at=soon.isoformat())
    assert (await key.get("/v1/models")).status_code == 200
    # An admin brings the expiry close (the past is refused: a key is revoked instead).
    edge = datetime.now(UTC) + timedelta(seconds=2)
    moved = await inprocess.admin.patch(f"/v1/keys/{key_id}", json={"expires_at": edge.isoformat()})
    assert moved.status_code == 200, moved.text
    await asyncio.sleep((edge - datetime.now(UTC)).total_seconds() + 0.01)
    door = await key.get("/v1/models")
    assert door.status_code == 401
    assert door.json()["error"]["type"] == "authentication_error"
    assert "expired at" in door.json()["error"]["message"]
    own = await key.get("/v1/conversations")
    assert own.status_code == 401
    assert own.json()["error"]["code"] == "unauthorized"
    listed = await inprocess.admin.get("/v1/keys")
    [shown] = [k for k in listed.json()["data"] if k["id"] == key_id]
    assert shown["expires_at"] is not None
