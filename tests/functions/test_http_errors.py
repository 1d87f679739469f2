"""One JSON error shape for everything: auth, routing, bad ids, bad bodies, oversize bodies."""

from __future__ import annotations

from typing import Any

import pytest

from tests.functions.conftest import Api


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "request_id", "details"}
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return dict(error)


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Basic abc"}, "malformed"),
        ({"Authorization": "Bearer"}, "malformed"),
        ({"Authorization": "Bearer not-a-key"}, "malformed API key"),
        ({"Authorization": "Bearer sb-" + "x" * 43}, "unknown API key"),
    ],
)
async def test_bad_credentials_get_401_json(
    api: Api, headers: dict[str, str], fragment: str
) -> None:
    response = await api.anonymous.get("/v1/conversations", headers=headers)
    error = assert_error(response, 401, "unauthorized")
    assert fragment in error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_routing_errors(api: Api) -> None:
    # (An unrouted path under /v1 is the OpenAI door's, answered in OpenAI's shape.)
    assert_error(await api.alice.get("/nothing-here"), 404, "not_found")
    assert_error(await api.alice.get("/v1/conversations/x/nothing"), 404, "not_found")
    assert_error(await api.alice.put("/v1/conversations"), 405, "method_not_allowed")
    error = assert_error(await api.alice.get("/v1/conversations/12345"), 400, "validation_error")
    assert "UUID" in error["message"]


async def test_malformed_json_and_wrong_types(api: Api) -> None:
    response = await api.alice.post(
        "/v1/conversations", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")
    error = assert_error(
        await api.alice.post("/v1/conversations", json={"title": 42}), 400, "validation_error"
    )
    assert "title" in error["message"]
    assert_error(
        await api.alice.get("/v1/conversations", params={"limit": 0}), 400, "validation_error"
    )
    assert_error(
        await api.alice.get("/v1/conversations", params={"cursor": "!!"}), 400, "validation_error"
    )


async def test_oversize_bodies_get_413(api: Api) -> None:
    body = b'{"title": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    response = await api.alice.post(
        "/v1/conversations", content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"]["limit_bytes"] == 1024 * 1024
