"""Hostile input is a 4xx naming what is wrong, never a 500, on PostgreSQL and SQLite alike.

In process (ASGI) for breadth; the key-before-body rule is also checked over a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from functions.core.db.tables import ApiKey, Conversation, LLMConfig, Message
from functions.core.schemas import MAX_JSON_DEPTH, encode_cursor
from tests.functions.conftest import INPROCESS_MODEL, Api
from tests.support.inprocess import InProcessGateway

NUL = "\u0000"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return dict(error)


async def world(gateway: InProcessGateway) -> dict[str, Any]:
    """A default configuration and a conversation with one exchange."""
    response = await gateway.admin.post(
        "/v1/configs", json={"name": "base", "model": INPROCESS_MODEL, "is_default": True}
    )
    assert response.status_code == 201, response.text
    conversation = (await gateway.admin.post("/v1/conversations", json={"title": "t"})).json()
    sent = await gateway.admin.post(
        f"/v1/conversations/{conversation['id']}/messages", json={"content": "hello"}
    )
    assert sent.status_code == 201, sent.text
    return conversation


async def row_counts() -> tuple[int, ...]:
    return (
        await ApiKey.count(),
        await LLMConfig.count(),
        await Conversation.count(),
        await Message.count(),
    )


# (method, path, JSON body, the field the 400 names); {conv} is a conversation's id.
NUL_BODIES = [
    ("POST", "/v1/conversations", {"title": f"a{NUL}b"}, "title"),
    ("POST", "/v1/conversations", {"metadata": {f"k{NUL}": 1}}, "metadata"),
    ("POST", "/v1/conversations", {"metadata": {"a": {"b": [f"x{NUL}"]}}}, "metadata.a.b[0]"),
    ("PATCH", "/v1/conversations/{conv}", {"title": NUL}, "title"),
    ("PATCH", "/v1/conversations/{conv}", {"metadata": {"deep": {NUL: NUL}}}, "metadata.deep"),
    ("POST", "/v1/conversations/{conv}/messages", {"content": f"hi{NUL}"}, "content"),
    ("POST", "/v1/conversations/{conv}/messages", {"content": "hi", "stop": [NUL]}, "stop[0]"),
    ("POST", "/v1/configs", {"name": "n", "model": f"m{NUL}"}, "model"),
    ("POST", "/v1/configs", {"name": "n", "model": "m", "system_prompt": NUL}, "system_prompt"),
    ("POST", "/v1/configs", {"name": "n", "model": "m", "extra": {"top_k": NUL}}, "extra.top_k"),
    ("PUT", "/v1/configs/base", {"model": "m", "stop": ["a", NUL]}, "stop[1]"),
    ("PATCH", "/v1/configs/base", {"extra": {NUL: 1}}, "extra"),
    ("POST", "/v1/keys", {"name": f"svc{NUL}"}, "name"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), NUL_BODIES)
async def test_nul_in_any_body_field_is_a_400_naming_it(
    inprocess: InProcessGateway, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    conversation = await world(inprocess)
    before = await row_counts()
    response = await inprocess.admin.request(
        method, path.format(conv=conversation["id"]), json=body
    )
    error = assert_error(response, 400, "validation_error")
    assert error["details"]["field"] == field
    if path != "/v1/keys":  # a key's name has a pattern of its own, which refuses it first
        assert "NUL" in error["message"]
    assert await row_counts() == before


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/configs/base%00x", "name"),
        ("/v1/configs/base%00x/versions", "name"),
        ("/v1/conversations/%00", "conversation_id"),
        ("/v1/configs?cursor=a%00b", "cursor"),
        ("/v1/conversations?cursor=%00", "cursor"),
        ("/v1/keys?cursor=%00", "cursor"),
        ("/v1/conversations/{conv}/messages?cursor=x%00", "cursor"),
        ("/v1/configs/base?version=1%00", "version"),
    ],
)
async def test_nul_in_a_path_or_query_parameter_is_a_400_naming_it(
    inprocess: InProcessGateway, path: str, field: str
) -> None:
    conversation = await world(inprocess)
    response = await inprocess.admin.get(path.format(conv=conversation["id"]))
    error = assert_error(response, 400, "validation_error")
    assert error["details"]["field"] == field


def tampered(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/configs/base?version=2147483648",
        "/v1/configs/base?version=1000000000000000000000000000000",
        "/v1/configs?limit=2147483648",
        "/v1/conversations?limit=1000000000000000000000000000000",
        "/v1/conversations/{conv}/messages?limit=2147483648",
        "/v1/conversations/{conv}/messages?cursor=" + encode_cursor("messages", 2**31),
        "/v1/conversations/{conv}/messages?cursor=" + encode_cursor("messages", 10**30),
        "/v1/conversations/{conv}/messages?cursor=" + encode_cursor("messages", -1),
        "/v1/configs/base/versions?cursor=" + encode_cursor("versions", 2**40),
        "/v1/conversations?cursor="
        + tampered("conversations", "0001-01-01T00:00:00+14:00", str(NUL)),
        "/v1/conversations?cursor="
        + tampered(
            "conversations", "0001-01-01T00:00:00-14:00", "3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10"
        ),
        "/v1/conversations?cursor="
        + tampered(
            "conversations", "9999-12-31T23:59:59-14:00", "3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10"
        ),
        "/v1/conversations?cursor="
        + tampered("conversations", "2026-01-01T00:00:00", "not-a-uuid"),
        "/v1/keys?cursor="
        + tampered("keys", "9999-12-31T23:59:59Z", "3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10"),
        "/v1/conversations/{conv}/messages?after=0",
        # A real cursor, of another listing.
        "/v1/conversations/{conv}/messages?cursor=" + encode_cursor("versions", 1),
        "/v1/keys?cursor="
        + encode_cursor("conversations", "2026-01-01T00:00:00Z", str(uuid.uuid4())),
        "/v1/conversations?cursor="
        + encode_cursor("keys", "2026-01-01T00:00:00Z", str(uuid.uuid4())),
        "/v1/configs?cursor=" + encode_cursor("evals", "base"),
    ],
)
async def test_integers_beyond_columns_and_tampered_cursors_are_400(
    inprocess: InProcessGateway, path: str
) -> None:
    conversation = await world(inprocess)
    response = await inprocess.admin.get(path.format(conv=conversation["id"]))
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"big": 2**64}}, "metadata.big"),
        ({"metadata": {"list": [1, -(2**63) - 1]}}, "metadata.list[1]"),
    ],
)
async def test_integers_beyond_64_bits_in_json_fields_are_400(
    inprocess: InProcessGateway, body: dict[str, Any], field: str
) -> None:
    await world(inprocess)
    response = await inprocess.admin.post("/v1/conversations", json=body)
    error = assert_error(response, 400, "validation_error")
    assert error["details"]["field"] == field
    extra = await inprocess.admin.post(
        "/v1/configs", json={"name": "x", "model": "m", "extra": {"n": 10**30}}
    )
    assert assert_error(extra, 400, "validation_error")["details"]["field"] == "extra.n"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"d": value}
    return value


async def test_json_depth_is_capped(inprocess: InProcessGateway) -> None:
    await world(inprocess)
    deepest = await inprocess.admin.post(
        "/v1/conversations", json={"metadata": nested(MAX_JSON_DEPTH)}
    )
    assert deepest.status_code == 201, deepest.text
    too_deep = await inprocess.admin.post(
        "/v1/conversations", json={"metadata": nested(MAX_JSON_DEPTH + 1)}
    )
    error = assert_error(too_deep, 400, "validation_error")
    assert str(MAX_JSON_DEPTH) in error["message"]
    for depth in (255, 1000, 100_000):
        body = b'{"metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
        response = await inprocess.admin.post(
            "/v1/configs", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (depth, response.text)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"title": "unfinished', "truncated"),
        (b'{"title": "\xff\xfe"}', "UTF-8"),
        (b'{"title": "a", "metadata": {"n": 1e400}}', "out of range"),
        (b'{"title": "\\ud800"}', "surrogate"),
        (b'{"title": "\\udc00x"}', "surrogate"),
        (b"", "body is required"),
        (b"   ", "body is required"),
    ],
)
async def test_unparseable_bodies_are_invalid_json(
    inprocess: InProcessGateway, body: bytes, fragment: str
) -> None:
    await world(inprocess)
    response = await inprocess.admin.post(
        "/v1/conversations", content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 400, "invalid_json")
    assert fragment in error["message"]


async def test_types_are_strict_and_unknown_fields_are_named(
    inprocess: InProcessGateway,
) -> None:
    conversation = await world(inprocess)
    url = f"/v1/conversations/{conversation['id']}/messages"
    for body, field in [
        ({"content": "x", "temperature": "0.5"}, "temperature"),
        ({"content": "x", "stream": "true"}, "stream"),
        ({"content": "x", "max_tokens": "5"}, "max_tokens"),
        ({"content": "x", "max_tokens": 5.5}, "max_tokens"),
        ({"content": "x", "temprature": 0.5}, "temprature"),
    ]:
        error = assert_error(await inprocess.admin.post(url, json=body), 400, "validation_error")
        assert error["details"]["field"] == field, (body, error)
        assert field in error["message"]
    # JSON has one number type: 5.0 is the integer 5, as JSON Schema says.
    accepted = await inprocess.admin.post(url, json={"content": "x", "max_tokens": 5.0})
    assert accepted.status_code == 201, accepted.text
    nested_unknown = await inprocess.admin.post(
        "/v1/configs", json={"name": "z", "model": "m", "extra": {}, "colour": 1}
    )
    assert assert_error(nested_unknown, 400, "validation_error")["details"]["field"] == "colour"


async def _never_ending_body() -> AsyncIterator[bytes]:
    yield b'{"metadata": ' + b"[" * 1000
    await asyncio.Event().wait()


async def test_an_unauthenticated_request_never_reads_its_body(
    inprocess: InProcessGateway,
) -> None:
    anonymous = inprocess.client(None)
    for method, path in [
        ("POST", "/v1/conversations"),
        ("POST", "/v1/configs"),
        ("PUT", "/v1/configs/base"),
        ("POST", "/v1/keys"),
        ("POST", "/v1/conversations/3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10/messages"),
    ]:
        # The body never ends: answering at all proves it was not read.
        response = await asyncio.wait_for(
            anonymous.request(
                method,
                path,
                content=_never_ending_body(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=5,
        )
        assert_error(response, 401, "unauthorized")


async def test_over_a_socket_a_keyless_body_is_refused_before_it_arrives(api: Api) -> None:
    """1 MiB announced, a deep prefix sent, no key: 401 at once, without the rest."""
    parts = urlsplit(api.base_url)
    head = (
        "POST /v1/conversations HTTP/1.1\r\n"
        f"Host: {parts.hostname}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {1024 * 1024}\r\n\r\n"
    ).encode()
    started = time.perf_counter()

    def exchange() -> bytes:
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            sock.sendall(head + b"[" * 60_000)
            return sock.recv(65536)

    answer = await asyncio.to_thread(exchange)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.perf_counter() - started < 2


@pytest.fixture
def inprocess_overrides() -> dict[str, Any]:
    return {"max_message_chars": 1000, "max_page_bytes": 8 * 1024}


async def test_a_message_is_bounded_by_the_setting(inprocess: InProcessGateway) -> None:
    conversation = await world(inprocess)
    url = f"/v1/conversations/{conversation['id']}/messages"
    response = await inprocess.admin.post(url, json={"content": "x" * 1001})
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"] == {"field": "content", "limit_chars": 1000}
    assert "SWITCHBOARD_MAX_MESSAGE_CHARS" in error["message"]
    ok = await inprocess.admin.post(url, json={"content": "x" * 1000})
    assert ok.status_code == 201, ok.text


async def test_a_page_of_messages_is_bounded_by_bytes(inprocess: InProcessGateway) -> None:
    conversation = await world(inprocess)
    url = f"/v1/conversations/{conversation['id']}/messages"
    for _ in range(6):
        sent = await inprocess.admin.post(url, json={"content": "é" * 1000})  # 2000 bytes
        assert sent.status_code == 201, sent.text
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await inprocess.admin.get(url, params=params)).json()
        size = sum(len(m["content"].encode()) for m in page["data"])
        assert page["data"], page
        assert size <= 8 * 1024 or len(page["data"]) == 1
        seen += [m["seq"] for m in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(1, 15))
    assert pages > 1


@pytest.mark.parametrize("listing", ["versions", "configs"])
async def test_a_page_of_configurations_is_bounded_by_bytes(
    inprocess: InProcessGateway, listing: str
) -> None:
    """A configuration can be large (its system prompt): a page of them holds about
    SWITCHBOARD_MAX_PAGE_BYTES whatever ``limit`` says, and the cursor reaches them all."""
    prompt = "é" * 1500  # 3000 bytes
    expected: list[Any] = []
    for index in range(6):
        name = f"big-{index}" if listing == "configs" else "big"
        spec = {"model": INPROCESS_MODEL, "system_prompt": prompt}
        if listing == "configs" or index == 0:
            response = await inprocess.admin.post("/v1/configs", json={"name": name, **spec})
        else:  # PUT stores a new version (its body names no config: the path does)
            response = await inprocess.admin.put(f"/v1/configs/{name}", json=spec)
        assert response.status_code in (200, 201), response.text
        expected.append(name if listing == "configs" else index + 1)
    url = "/v1/configs/big/versions" if listing == "versions" else "/v1/configs"
    seen: list[Any] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await inprocess.admin.get(url, params=params)).json()
        assert page["data"], page
        size = sum(len((c["system_prompt"] or "").encode()) for c in page["data"])
        assert size <= 8 * 1024 or len(page["data"]) == 1
        seen += [c["name"] if listing == "configs" else c["version"] for c in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages >= 3


# Text whose JSON is much longer than its stored bytes: a control character leaves as a
# 6-byte escape, a quote or a backslash as 2 (1000 characters: 5008 bytes sent).
ESCAPED = "\x01" * 800 + '"' * 100 + "\\" * 90 + "\x1f" * 10


async def pages_sent(gateway: InProcessGateway, url: str) -> list[list[dict[str, Any]]]:
    """Every page of a listing, each checked to be within the page-bytes setting as sent
    (the whole body), unless it is a single item larger than a page."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        response = await gateway.admin.get(
            url, params={"limit": 200, "cursor": cursor} if cursor else {"limit": 200}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["data"], page
        assert len(response.content) <= 8 * 1024 or len(page["data"]) == 1, (
            len(response.content),
            len(page["data"]),
        )
        pages.append(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


async def test_a_page_is_bounded_by_the_bytes_it_sends_not_those_stored(
    inprocess: InProcessGateway,
) -> None:
    """Six messages of 1000 escaped characters are 6000 stored bytes but 30 kB sent: pages
    of one or two of them, not one page of 30 kB against an 8 KiB setting."""
    conversation = await world(inprocess)
    url = f"/v1/conversations/{conversation['id']}/messages"
    for _ in range(6):
        sent = await inprocess.admin.post(url, json={"content": ESCAPED})
        assert sent.status_code == 201, sent.text
    pages = await pages_sent(inprocess, url)
    assert [m["seq"] for page in pages for m in page] == list(range(1, 15))
    assert sum(m["content"] == ESCAPED for page in pages for m in page) == 6
    # Two escaped messages (10 kB) never share a page.
    assert all(sum(m["content"] == ESCAPED for m in page) <= 1 for page in pages)


async def test_a_page_of_conversations_is_bounded_by_the_bytes_it_sends(
    inprocess: InProcessGateway,
) -> None:
    """A title and metadata of escaped characters: about 7 kB sent each, never two in a
    page of 8 KiB, and the cursor still reaches every one."""
    await world(inprocess)
    created = []
    for index in range(5):
        body = {"title": ESCAPED[:500], "metadata": {"note": ESCAPED[:700], "n": index}}
        response = await inprocess.admin.post("/v1/conversations", json=body)
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    pages = await pages_sent(inprocess, "/v1/conversations")
    listed = [c["id"] for page in pages for c in page]
    assert set(created) <= set(listed), (created, listed)
    assert len(listed) == len(set(listed))
    assert all(sum(c["id"] in created for c in page) <= 1 for page in pages)


@pytest.mark.parametrize("listing", ["versions", "configs"])
async def test_a_page_of_configurations_is_bounded_by_the_bytes_it_sends(
    inprocess: InProcessGateway, listing: str
) -> None:
    prompt = ESCAPED * 2  # 10 kB sent: larger than a page, so each comes alone
    for index in range(4):
        name = f"esc-{index}" if listing == "configs" else "esc"
        spec = {"model": INPROCESS_MODEL, "system_prompt": prompt[: 2000 - index]}
        if listing == "configs" or index == 0:
            response = await inprocess.admin.post("/v1/configs", json={"name": name, **spec})
        else:
            response = await inprocess.admin.put(f"/v1/configs/{name}", json=spec)
        assert response.status_code in (200, 201), response.text
    url = "/v1/configs/esc/versions" if listing == "versions" else "/v1/configs"
    pages = await pages_sent(inprocess, url)
    assert [len(page) for page in pages] == [1, 1, 1, 1]
    assert [c["system_prompt"] for page in pages for c in page] == [
        prompt[: 2000 - index] for index in range(4)
    ]


# Every admin route, with a body or a query that would be refused on its own.
ADMIN_ROUTES = [
    ("POST", "/v1/configs", b"{"),
    ("POST", "/v1/configs", b'{"name": "x", "model": "m", "unknown": 1}'),
    ("PUT", "/v1/configs/base", b"[]"),
    ("PATCH", "/v1/configs/base", b'{"temperature": "hot"}'),
    ("DELETE", "/v1/configs/base", None),
    ("POST", "/v1/configs/base/unarchive", None),
    ("POST", "/v1/keys", b'{"name": "bad\\u0007name"}'),
    ("GET", "/v1/keys?limit=0", None),
    ("DELETE", "/v1/keys/not-a-uuid", None),
    ("GET", "/v1/upstreams?checks=1000", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_a_key_without_the_admin_scope_is_refused_before_its_request_is_read(
    inprocess: InProcessGateway, method: str, path: str, body: bytes | None
) -> None:
    """403 whatever the body or query holds: what a key may not do is said first, and a
    refused request costs no parsing."""
    await world(inprocess)
    chat = await inprocess.caller("chat-only")
    headers = {"content-type": "application/json"} if body is not None else {}
    response = await chat.http.request(method, path, content=body, headers=headers)
    error = assert_error(response, 403, "forbidden")
    assert "admin" in error["message"]
    assert await LLMConfig.count() == 1  # nothing was changed


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "text/plain"}, b'{"title": "t"}'),
        ({"content-type": "application/x-www-form-urlencoded"}, b"title=t"),
        ({"content-type": "multipart/form-data; boundary=x"}, b"--x--"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, b'{"title": "t"}'),
        ({"content-encoding": "br"}, b'{"title": "t"}'),
    ],
)
async def test_a_body_not_declared_as_json_or_compressed_is_a_415(
    inprocess: InProcessGateway, headers: dict[str, str], body: bytes
) -> None:
    before = await row_counts()
    response = await inprocess.admin.post("/v1/conversations", content=body, headers=headers)
    error = assert_error(response, 415, "unsupported_media_type")
    assert error["details"]["header"] in ("content-type", "content-encoding")
    assert await row_counts() == before


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=utf-8", "app/x+json"]
)
async def test_json_bodies_are_taken_with_or_without_a_declared_type(
    inprocess: InProcessGateway, content_type: str | None
) -> None:
    await world(inprocess)
    headers = {"content-type": content_type} if content_type else {}
    response = await inprocess.admin.post(
        "/v1/conversations", content=b'{"title": "t"}', headers=headers
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/conversations?limit=1&limit=2", "limit"),
        ("/v1/configs/base?version=1&version=2", "version"),
        ("/v1/conversations?limit=1e2", "limit"),
        ("/v1/conversations?limit=10.0", "limit"),
        ("/v1/conversations?limit=%2010", "limit"),
        ("/v1/configs/base?version=0x1", "version"),
        ("/v1/upstreams?checks=+3", "checks"),
    ],
)
async def test_a_query_number_is_digits_given_once(
    inprocess: InProcessGateway, path: str, field: str
) -> None:
    await world(inprocess)
    error = assert_error(await inprocess.admin.get(path), 400, "validation_error")
    assert error["details"]["field"] == field
    assert field in error["message"]


async def test_several_authorization_or_idempotency_headers_are_refused(
    inprocess: InProcessGateway,
) -> None:
    conversation = await world(inprocess)
    chat = await inprocess.caller("second")
    admin_secret = inprocess.admin.headers["authorization"]
    # Neither key's request: which one counts would be anybody's guess.
    both = [("authorization", chat.http.headers["authorization"]), ("authorization", admin_secret)]
    transport = inprocess.admin._transport  # the same app, without the client's own key
    async with httpx.AsyncClient(
        transport=transport, base_url=str(inprocess.admin.base_url)
    ) as raw:
        response = await raw.get("/v1/keys", headers=both)
        error = assert_error(response, 401, "unauthorized")
        assert "one Authorization header" in error["message"]

        before = await row_counts()
        url = f"/v1/conversations/{conversation['id']}/messages"
        response = await raw.post(
            url,
            content=b'{"content": "twice?"}',
            headers=[
                ("authorization", admin_secret),
                ("content-type", "application/json"),
                ("idempotency-key", "a"),
                ("idempotency-key", "b"),
            ],
        )
        error = assert_error(response, 400, "validation_error")
        assert error["details"]["field"] == "Idempotency-Key"
        assert await row_counts() == before


def patterns_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["pattern"]] if isinstance(value.get("pattern"), str) else []
        return found + [p for item in value.values() for p in patterns_in(item)]
    if isinstance(value, list):
        return [p for item in value for p in patterns_in(item)]
    return []


PROBES = ["a", "abc", "support-bot", "billing-service", "x.1_2:3", "Key-1"]


async def test_no_documented_pattern_admits_a_trailing_newline_it_would_not_end_with(
    inprocess: InProcessGateway,
) -> None:
    """Python's ``$`` also matches before a final newline: a pattern ending in it admits
    "name\\n" where the OpenAPI document's (ECMAScript's) ``$`` does not. Every pattern
    must read alike in both: what it admits followed by a newline, it admits at the true
    end too."""
    document = (await inprocess.admin.get("/schema/openapi.json")).json()
    patterns = set(patterns_in(document))
    assert len(patterns) >= 4, patterns
    for pattern in patterns:
        true_end = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        for probe in PROBES:
            text = probe + "\n"
            assert bool(re.search(pattern, text)) == bool(re.search(true_end, text)), pattern


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/configs", {"name": "trailing\n", "model": INPROCESS_MODEL}),
        ("GET", "/v1/configs/base%0A", None),
        ("GET", "/v1/configs/base%0A/versions", None),
        ("PUT", "/v1/configs/base%0A", {"model": INPROCESS_MODEL}),
    ],
)
async def test_a_name_with_a_trailing_newline_is_refused(
    inprocess: InProcessGateway, method: str, path: str, body: dict[str, Any] | None
) -> None:
    await world(inprocess)
    before = await row_counts()
    response = await inprocess.admin.request(method, path, json=body)
    error = assert_error(response, 400, "validation_error")
    assert error["details"]["field"] == "name"
    assert await row_counts() == before
