"""The configs and keys functions: admin writes, everyone reads configs, revocation."""

from __future__ import annotations

import asyncio
import time
import uuid

from functions.core.keys import service as keys_service
from tests.functions.conftest import Api
from tests.support.timing import scaled


async def test_config_lifecycle(api: Api) -> None:
    created = await api.create_config(
        "support", temperature=0.2, system_prompt="Be kind.", extra={"top_k": 20}
    )
    assert (created["version"], created["extra"]) == (1, {"top_k": 20})
    updated = await api.admin.put(
        "/v1/configs/support", json={"model": "sim-model", "temperature": 0.9}
    )
    assert updated.status_code == 200
    assert updated.json()["version"] == 2

    latest = (await api.alice.get("/v1/configs/support")).json()
    assert (latest["version"], latest["temperature"]) == (2, 0.9)
    first = (await api.alice.get("/v1/configs/support", params={"version": 1})).json()
    assert (first["temperature"], first["system_prompt"]) == (0.2, "Be kind.")
    versions = (await api.alice.get("/v1/configs/support/versions")).json()["data"]
    assert [v["version"] for v in versions] == [1, 2]
    assert [c["name"] for c in (await api.alice.get("/v1/configs")).json()["data"]] == ["support"]

    archived = await api.admin.delete("/v1/configs/support")
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    assert (await api.alice.get("/v1/configs")).json() == {"data": [], "next_cursor": None}
    listed = (await api.alice.get("/v1/configs", params={"include_archived": "true"})).json()[
        "data"
    ]
    assert [c["name"] for c in listed] == ["support"]


async def test_writing_configs_needs_an_admin_key(api: Api) -> None:
    await api.create_config("fixed")
    attempts = [
        await api.alice.post("/v1/configs", json={"name": "mine", "model": "m"}),
        await api.alice.put("/v1/configs/fixed", json={"model": "m"}),
        await api.alice.delete("/v1/configs/fixed"),
    ]
    for response in attempts:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    assert (await api.alice.get("/v1/configs/fixed")).status_code == 200


async def test_config_errors(api: Api) -> None:
    await api.create_config("taken")
    duplicate = await api.admin.post("/v1/configs", json={"name": "taken", "model": "m"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "conflict"
    missing = await api.alice.get("/v1/configs/nope")
    assert missing.status_code == 404
    old = await api.alice.get("/v1/configs/taken", params={"version": 7})
    assert old.status_code == 404
    bad = await api.admin.post("/v1/configs", json={"name": "Bad Name", "model": "m"})
    assert bad.status_code == 400
    assert "name" in bad.json()["error"]["message"]
    reserved = await api.admin.post(
        "/v1/configs", json={"name": "sneaky", "model": "m", "extra": {"stream": True}}
    )
    assert reserved.status_code == 400
    assert "stream" in reserved.json()["error"]["message"]


async def test_keys_create_list_and_revoke_at_once(api: Api) -> None:
    created = await api.admin.post("/v1/keys", json={"name": "service"})
    assert created.status_code == 201
    body = created.json()
    assert body["scopes"] == ["chat"]
    secret = body["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.anonymous.get("/v1/conversations", headers=headers)).status_code == 200

    listed = (await api.admin.get("/v1/keys")).json()["data"]
    assert body["id"] in {k["id"] for k in listed}
    assert all("secret" not in k for k in listed)

    revoked = await api.admin.delete(f"/v1/keys/{body['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    after = await api.anonymous.get("/v1/conversations", headers=headers)
    assert after.status_code == 401
    assert "revoked" in after.json()["error"]["message"]


async def test_keys_need_admin(api: Api) -> None:
    assert (await api.alice.post("/v1/keys", json={"name": "x"})).status_code == 403
    assert (await api.alice.get("/v1/keys")).status_code == 403
    bad_id = await api.admin.delete("/v1/keys/not-a-uuid")
    assert bad_id.status_code == 400
    assert bad_id.json()["error"]["code"] == "validation_error"
    unknown = await api.admin.delete("/v1/keys/00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 404


async def test_a_key_revoked_by_another_process_stops_working_at_once(
    api: Api,
) -> None:
    """Another process revokes. On PostgreSQL the gateway caches keys for 300 s here, so
    only its NOTIFY listener can make this pass; on SQLite the 1 s cache runs out."""
    created = (await api.admin.post("/v1/keys", json={"name": "leaked"})).json()
    headers = {"Authorization": f"Bearer {created['secret']}"}
    assert (await api.anonymous.get("/v1/conversations", headers=headers)).status_code == 200
    await keys_service.revoke_key(uuid.UUID(created["id"]))  # straight to the database
    deadline = time.monotonic() + scaled(30)  # a tenth of the cache's 300 s: only NOTIFY
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = (await api.anonymous.get("/v1/conversations", headers=headers)).status_code
        await asyncio.sleep(0.1)
    assert status == 401
