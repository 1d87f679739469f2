"""A configuration whose model no upstream serves is stored, and its writer is told so at
once (``warnings`` in the response, a log line), not by the first send's 404."""

from __future__ import annotations

from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway


async def test_a_model_nobody_serves_is_stored_with_a_warning(
    inprocess: InProcessGateway,
) -> None:
    created = await inprocess.admin.post(
        "/v1/configs", json={"name": "typo", "model": "llama-3-8b-instruct"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["version"] == 1
    (warning,) = body["warnings"]
    assert "no LLM upstream serves model 'llama-3-8b-instruct'" in warning
    assert f"served: {INPROCESS_MODEL}" in warning

    # Pointing it at a served model clears the warning; PUT and PATCH are checked alike.
    fixed = await inprocess.admin.patch("/v1/configs/typo", json={"model": INPROCESS_MODEL})
    assert fixed.status_code == 200, fixed.text
    assert (fixed.json()["version"], fixed.json()["warnings"]) == (2, [])
    broken = await inprocess.admin.put("/v1/configs/typo", json={"model": "gone-model"})
    assert broken.status_code == 200, broken.text
    assert "'gone-model'" in broken.json()["warnings"][0]

    served = await inprocess.admin.post(
        "/v1/configs", json={"name": "fine", "model": INPROCESS_MODEL}
    )
    assert served.status_code == 201, served.text
    assert served.json()["warnings"] == []
    # Reading a configuration back carries no warnings field: they belong to the write.
    read = await inprocess.admin.get("/v1/configs/typo")
    assert "warnings" not in read.json()
