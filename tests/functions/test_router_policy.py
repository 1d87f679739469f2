"""Per-router policy: routers in one app, each answering in its own error shape and reading
bodies as strictly as its policy says.

One app mounts the chat API (Switchboard's policy), a door under OpenAI's policy and its
twin under Switchboard's (the same handlers, so the same exceptions). The same exception
comes out in two shapes; an unknown field is a 400 on one and ignored on the other; the
framework's own 404, 405, 413 and 415 follow the router whose path they are under; every
answer carries ``x-request-id``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import msgspec
import pytest
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody
from piccolo.engine.base import Engine

from functions.chat.app import router as chat_router
from functions.core.db.engine import use_engine
from functions.core.errors import NotFoundError, SwitchboardError
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.schemas import Input
from functions.core.web.app import build_app
from functions.core.web.auth import ADMIN
from functions.core.web.docs import errors
from functions.core.web.policy import OPENAI, SWITCHBOARD, PolicyByPath, RouterPolicy
from tests.conftest import truncate_all
from tests.support.inprocess import asgi_client, inprocess_settings

MAX_BODY = 4096
SECRET_DETAIL = "the-internals-a-client-must-not-see"


class Part(Input):
    size: int


class Echo(Input):
    name: str
    count: int = 1
    part: Part | None = None
    parts: list[Part] = msgspec.field(default_factory=list)


class BusyError(SwitchboardError):
    status_code: ClassVar[int] = 429
    code: ClassVar[str] = "rate_limited"


def door_handlers(policy: RouterPolicy) -> list[HTTPRouteHandler]:
    """The same handlers for each router (fresh objects: a handler has one owner)."""

    @post("/echo", status_code=200)
    async def echo(data: JSONBody[Echo]) -> Echo:
        return data

    @get("/things/{thing_id:uuid}", responses=errors(404, policy=policy))
    async def missing(thing_id: FromPath[uuid.UUID]) -> None:
        raise NotFoundError(f"thing {thing_id} not found", details={"field": "thing_id"})

    @get("/busy")
    async def busy() -> None:
        raise BusyError("too many requests for this key", retry_after_s=3)

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET_DETAIL)

    @get("/admin", opt=ADMIN)
    async def admin_only() -> None:
        return None

    return [echo, missing, busy, boom, admin_only]


def door(policy: RouterPolicy, path: str) -> Any:
    return policy.router(
        path=path, route_handlers=door_handlers(policy), security=[{"BearerAuth": []}]
    )


@dataclass
class Clients:
    admin: httpx.AsyncClient
    chat_only: httpx.AsyncClient
    anonymous: httpx.AsyncClient


@pytest.fixture
async def engine(pg_engine: Engine[Any]) -> AsyncIterator[Engine[Any]]:
    """PostgreSQL, emptied afterwards (the app works with connections of its own)."""
    use_engine(pg_engine)
    yield pg_engine
    use_engine(pg_engine)
    await truncate_all(pg_engine)


@asynccontextmanager
async def policy_app(database_url: str) -> AsyncIterator[Clients]:
    """The chat API, an OpenAI door (/v1/door) and its strict twin (/v1/twin), one app."""
    settings = inprocess_settings(database_url, ["http://127.0.0.1:9"], max_body_bytes=MAX_BODY)
    routers = [chat_router, door(OPENAI, "/v1/door"), door(SWITCHBOARD, "/v1/twin")]
    app = build_app("policy-test", routers, settings=settings, uses_llm=False)
    async with app.lifespan():
        admin = await keys.create_key(ApiKeyCreate(name="admin", scopes=["admin", "chat"]))
        chat = await keys.create_key(ApiKeyCreate(name="chatter", scopes=["chat"]))
        clients = Clients(
            asgi_client(app, admin.secret), asgi_client(app, chat.secret), asgi_client(app, None)
        )
        try:
            yield clients
        finally:
            for client in (clients.admin, clients.chat_only, clients.anonymous):
                await client.aclose()


def switchboard_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "request_id", "details"}
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def openai_error(
    response: httpx.Response, status: int, type_: str, code: str, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's shape, as its clients read it: ``error`` with exactly these four keys."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (type_, code, param)
    assert isinstance(error["message"], str)
    assert error["message"]
    assert len(response.headers["x-request-id"]) >= 8
    return error


async def test_the_same_exception_in_two_shapes(engine: Engine[Any], pg_url: str) -> None:
    thing = uuid.uuid4()
    async with policy_app(pg_url) as api:
        strict = switchboard_error(
            await api.admin.get(f"/v1/twin/things/{thing}"), 404, "not_found"
        )
        door = openai_error(
            await api.admin.get(f"/v1/door/things/{thing}"),
            404,
            "invalid_request_error",
            "not_found",
            param="thing_id",
        )
        assert door["message"] == strict["message"] == f"thing {thing} not found"
        assert strict["details"] == {"field": "thing_id"}
        # The chat API mounted beside them keeps its shape.
        switchboard_error(await api.admin.get(f"/v1/conversations/{thing}"), 404, "not_found")

        # The headers a status calls for come with either shape.
        busy = await api.admin.get("/v1/door/busy")
        openai_error(busy, 429, "rate_limit_error", "rate_limited")
        assert busy.headers["retry-after"] == "3"
        assert (await api.admin.get("/v1/twin/busy")).headers["retry-after"] == "3"


async def test_auth_errors_in_each_routers_shape(engine: Engine[Any], pg_url: str) -> None:
    async with policy_app(pg_url) as api:
        response = await api.anonymous.post("/v1/door/echo", json={"name": "a"})
        openai_error(response, 401, "authentication_error", "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
        switchboard_error(
            await api.anonymous.post("/v1/conversations", json={}), 401, "unauthorized"
        )

        response = await api.chat_only.get("/v1/door/admin")
        openai_error(response, 403, "permission_error", "forbidden")
        switchboard_error(await api.chat_only.get("/v1/twin/admin"), 403, "forbidden")


async def test_unknown_fields_refused_by_one_router_ignored_by_the_other(
    engine: Engine[Any], pg_url: str
) -> None:
    body = {
        "name": "a",
        "stream_options": {"include_usage": True},
        "part": {"size": 1, "unit": "cm"},
        "parts": [{"size": 2, "colour": "red"}, {"size": 3}],
    }
    async with policy_app(pg_url) as api:
        response = await api.admin.post("/v1/door/echo", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "name": "a",
            "count": 1,
            "part": {"size": 1},
            "parts": [{"size": 2}, {"size": 3}],
        }

        error = switchboard_error(
            await api.admin.post("/v1/twin/echo", json=body), 400, "validation_error"
        )
        assert error["details"]["field"] == "stream_options"
        nested = {"name": "a", "parts": [{"size": 2, "colour": "red"}]}
        error = switchboard_error(
            await api.admin.post("/v1/twin/echo", json=nested), 400, "validation_error"
        )
        assert error["details"]["field"] == "parts[0].colour"
        error = switchboard_error(
            await api.admin.post("/v1/conversations", json={"title": "t", "bogus": 1}),
            400,
            "validation_error",
        )
        assert error["details"]["field"] == "bogus"


async def test_a_tolerant_router_still_reads_known_fields_strictly(
    engine: Engine[Any], pg_url: str
) -> None:
    async with policy_app(pg_url) as api:
        wrong = {"name": 5, "extra": 1}
        openai_error(
            await api.admin.post("/v1/door/echo", json=wrong),
            400,
            "invalid_request_error",
            "validation_error",
            param="name",
        )
        as_string = {"name": "a", "junk": [1], "part": {"size": "1", "zzz": 0}}
        openai_error(
            await api.admin.post("/v1/door/echo", json=as_string),
            400,
            "invalid_request_error",
            "validation_error",
            param="part.size",
        )
        openai_error(
            await api.admin.post("/v1/door/echo", json={"junk": 1}),
            400,
            "invalid_request_error",
            "validation_error",
            param="name",
        )
        # JSON's one number type, read as the strict router reads it: 2.0 is the integer 2.
        response = await api.admin.post("/v1/door/echo", json={"count": 2.0, "x": 1, "name": "a"})
        assert response.status_code == 200, response.text
        assert response.json()["count"] == 2
        # Truncated, and a number no float holds even in a field that would be ignored:
        # both unreadable JSON.
        for unreadable in (b'{"name": "a"', b'{"name": "a", "ignored": 1e400}'):
            response = await api.admin.post(
                "/v1/door/echo", content=unreadable, headers={"content-type": "application/json"}
            )
            openai_error(response, 400, "invalid_request_error", "invalid_json", param="body")


async def test_framework_errors_follow_the_router_of_their_path(
    engine: Engine[Any], pg_url: str
) -> None:
    too_big = {"name": "x" * (MAX_BODY + 10)}
    plain_text = {"content": b'{"name": "a"}', "headers": {"content-type": "text/plain"}}
    async with policy_app(pg_url) as api:
        # 404 and 405 are raised before any route is chosen: the app decides by path.
        openai_error(
            await api.admin.get("/v1/door/nothing-here"),
            404,
            "invalid_request_error",
            "not_found",
        )
        switchboard_error(await api.admin.get("/v1/twin/nothing-here"), 404, "not_found")
        switchboard_error(await api.admin.get("/v1/doorway"), 404, "not_found")
        switchboard_error(await api.admin.get("/v1/nothing-here"), 404, "not_found")

        response = await api.admin.delete("/v1/door/echo")
        error = openai_error(response, 405, "invalid_request_error", "method_not_allowed")
        assert "POST" in error["message"]
        assert "POST" in response.headers["allow"].split(", ")
        switchboard_error(await api.admin.put("/v1/conversations"), 405, "method_not_allowed")

        openai_error(
            await api.admin.post("/v1/door/echo", json=too_big),
            413,
            "invalid_request_error",
            "payload_too_large",
        )
        error = switchboard_error(
            await api.admin.post("/v1/twin/echo", json=too_big), 413, "payload_too_large"
        )
        assert error["details"] == {"limit_bytes": MAX_BODY}
        switchboard_error(
            await api.admin.post("/v1/conversations", json={"title": "x" * MAX_BODY}),
            413,
            "payload_too_large",
        )

        openai_error(
            await api.admin.post("/v1/door/echo", **plain_text),  # type: ignore[arg-type]
            415,
            "invalid_request_error",
            "unsupported_media_type",
        )
        switchboard_error(
            await api.admin.post("/v1/conversations", **plain_text),  # type: ignore[arg-type]
            415,
            "unsupported_media_type",
        )


async def test_unexpected_errors_hide_their_detail_in_either_shape(
    engine: Engine[Any], pg_url: str
) -> None:
    async with policy_app(pg_url) as api:
        response = await api.admin.get("/v1/door/boom", headers={"x-request-id": "trace-me-1"})
        error = openai_error(response, 500, "server_error", "internal_error")
        assert response.headers["x-request-id"] == "trace-me-1"
        assert SECRET_DETAIL not in response.text
        assert "Traceback" not in response.text
        assert "request_id" in error["message"]
        response = await api.admin.get("/v1/twin/boom")
        switchboard_error(response, 500, "internal_error")
        assert SECRET_DETAIL not in response.text


async def test_the_document_shows_each_routers_error_shape(
    engine: Engine[Any], pg_url: str
) -> None:
    async with policy_app(pg_url) as api:
        response = await api.anonymous.get("/schema/openapi.json")
        assert response.status_code == 200, response.text
        document = response.json()
    shapes = {}
    for prefix in ("/v1/door", "/v1/twin"):
        operation = document["paths"][f"{prefix}/things/{{thing_id}}"]["get"]
        for status in ("401", "404", "500"):
            content = operation["responses"][status]["content"]["application/json"]
            schema = content["schema"]["$ref"].rsplit("/", 1)[1]
            examples = [example["value"] for example in content["examples"].values()]
            shapes[prefix, status] = schema, {frozenset(value["error"]) for value in examples}
    # Litestar drops null values from examples, so a null param is not shown.
    openai_keys = frozenset({"message", "type", "code"})
    switchboard_keys = frozenset({"code", "message", "request_id", "details"})
    for status in ("401", "404", "500"):
        assert shapes["/v1/door", status] == ("OpenAIErrorBody", {openai_keys})
        assert shapes["/v1/twin", status] == ("ErrorBody", {switchboard_keys})
    detail = document["components"]["schemas"]["OpenAIErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}


def test_an_unrouted_path_takes_the_policy_of_the_longest_router_path_holding_it() -> None:
    # An OpenAI door at /v1 beside Switchboard's API at /v1/conversations, as a gateway
    # serving /v1/chat/completions would mount them.
    routers = [
        OPENAI.router(path="/v1", route_handlers=door_handlers(OPENAI)),
        SWITCHBOARD.router(path="/v1/conversations", route_handlers=door_handlers(SWITCHBOARD)),
    ]
    by_path = PolicyByPath(routers, default=SWITCHBOARD)
    assert by_path.policy_for("/v1/chat/nothing") is OPENAI
    assert by_path.policy_for("/v1") is OPENAI
    assert by_path.policy_for("/v1/conversations") is SWITCHBOARD
    assert by_path.policy_for("/v1/conversations/x/y") is SWITCHBOARD
    assert by_path.policy_for("/v1x") is SWITCHBOARD
    assert by_path.policy_for("/healthz") is SWITCHBOARD
    assert PolicyByPath(routers, default=OPENAI).policy_for("/elsewhere") is OPENAI
