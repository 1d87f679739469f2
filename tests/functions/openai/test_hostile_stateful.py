"""Hostile input to the door's stateful routes is a clear 4xx in OpenAI's error shape.

Responses (``/v1/responses*``), Conversations (``/openai/v1/conversations*``), stored chat
completions and ``n``, and the admin's key limits and access lists: wrong types, numbers
out of range, malformed ids of every kind, deep and huge JSON, metadata over OpenAI's
limits. Never a 422 or a 500, never a traceback or SQL in the body, never a row stored
for a refused request. In process (ASGI), on PostgreSQL and SQLite; each table of cases is
sent in one test (one gateway) and every miss is reported at once.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from functions.core.db.tables import Conversation, Message
from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import Caller, InProcessGateway

HEX = "0123456789abcdef" * 2
LEAKS = ("Traceback", "SELECT ", "INSERT ", "asyncpg", "sqlite3", "psycopg", 'File "')
# OpenAI's limits on metadata (and one more pair, key or character than each allows).
TOO_MANY_PAIRS = {f"k{i}": "v" for i in range(17)}
LONG_KEY = {"k" * 65: "v"}
LONG_VALUE = {"k": "v" * 513}
BAD_METADATA: list[Any] = [TOO_MANY_PAIRS, LONG_KEY, LONG_VALUE, {"k": 1}, ["k"], "k"]
# Ids that name nothing: bad hex, another kind's prefix, unicode. A NUL or 10 KB in a
# path may also be refused as such (a 400 naming the id), never looked up.
ODD_IDS = ["resp_%00" + HEX, "x" * 10_000]
BAD_IDS = [
    "resp_" + "g" * 32,
    "resp_" + HEX.upper(),
    "resp_" + HEX[:31],
    "conv_" + HEX,
    "msg_" + HEX,
    "chatcmpl-" + HEX,
    "resp_" + "é" * 32,
]


def problem(response: httpx.Response, status: int | tuple[int, ...]) -> str | None:
    """What is wrong with ``response`` as OpenAI's error of ``status`` (None: nothing)."""
    wanted = (status,) if isinstance(status, int) else status
    if response.status_code not in wanted:
        return f"status {response.status_code}, wanted {wanted}: {response.text[:300]}"
    if any(leak in response.text for leak in LEAKS):
        return f"a leak in the body: {response.text[:300]}"
    if response.status_code == 200:  # accepted as harmless (a filter naming nothing)
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not OpenAI's shape: {response.text[:300]}"
    if set(error) != {"message", "type", "param", "code"}:
        return f"error fields {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "no message"
    if error["type"] != ("invalid_request_error" if response.status_code < 500 else "api_error"):
        return f"type {error['type']}"
    return None


def chat_problem(response: httpx.Response, status: int) -> str | None:
    """The chat API's shape for the admin routes: ``{"error": {code, message, ...}}``."""
    if response.status_code != status:
        return f"status {response.status_code}, wanted {status}: {response.text[:300]}"
    if any(leak in response.text for leak in LEAKS):
        return f"a leak in the body: {response.text[:300]}"
    error = response.json().get("error", {})
    if not error.get("code") or not error.get("message"):
        return f"not the chat API's shape: {response.text[:300]}"
    return None


Case = tuple[str, str, Any, int | tuple[int, ...]]


async def send_cases(client: httpx.AsyncClient, cases: list[Case], *, shape: Any = problem) -> None:
    """Send every case; fail once, listing each case answered wrongly."""
    misses = []
    for method, path, body, status in cases:
        content = body if isinstance(body, bytes) else None
        payload = None if content is not None or body is None else body
        response = await client.request(
            method,
            path,
            json=payload,
            content=content,
            headers={"content-type": "application/json"} if content is not None else None,
        )
        miss = shape(response, status)
        if miss is not None:
            misses.append(f"{method} {path[:80]} {str(body)[:80]!r}: {miss}")
    assert not misses, "\n".join(misses)


async def world(gateway: InProcessGateway) -> tuple[Caller, Caller, dict[str, str]]:
    """alice and bob, a default configuration, and one of each stored thing of bob's."""
    response = await gateway.admin.post(
        "/v1/configs", json={"name": "base", "model": INPROCESS_MODEL, "is_default": True}
    )
    assert response.status_code == 201, response.text
    alice, bob = await gateway.caller("alice"), await gateway.caller("bob")
    made = await bob.http.post("/v1/responses", json={"model": INPROCESS_MODEL, "input": "Hi"})
    assert made.status_code == 200, made.text
    completion = await bob.http.post(
        "/v1/chat/completions",
        json={
            "model": INPROCESS_MODEL,
            "messages": [{"role": "user", "content": "Hello"}],
            "store": True,
        },
    )
    assert completion.status_code == 200, completion.text
    conversation = await bob.http.post(
        "/openai/v1/conversations", json={"items": [{"role": "user", "content": "Hey"}]}
    )
    assert conversation.status_code == 200, conversation.text
    conv_id = conversation.json()["id"]
    items = await bob.http.get(f"/openai/v1/conversations/{conv_id}/items")
    ids = {
        "response": made.json()["id"],
        "output_item": made.json()["output"][0]["id"],
        "completion": completion.json()["id"],
        "conversation": conv_id,
        "item": items.json()["data"][0]["id"],
    }
    return alice, bob, ids


async def test_responses_refuse_hostile_bodies(inprocess: InProcessGateway) -> None:
    alice, _, bob = await world(inprocess)
    before = (await Conversation.count(), await Message.count())
    model = INPROCESS_MODEL

    def body(**fields: Any) -> dict[str, Any]:
        return {"model": model, "input": "Hi", **fields}

    deep = b'{"model": "%s", "input": %s"x"%s}' % (model.encode(), b"[" * 5_000, b"]" * 5_000)
    cases: list[Case] = [
        ("POST", "/v1/responses", b"[]", 400),
        ("POST", "/v1/responses", b'"hello"', 400),
        ("POST", "/v1/responses", b"{", 400),
        ("POST", "/v1/responses", b'{"model": "' + model.encode() + b'", "input": "\xff"}', 400),
        ("POST", "/v1/responses", {"input": "Hi"}, 400),
        ("POST", "/v1/responses", body(model=7), 400),
        ("POST", "/v1/responses", body(input=7), 400),
        ("POST", "/v1/responses", body(input=[7]), 400),
        ("POST", "/v1/responses", body(input=[{"type": "telepathy", "text": "x"}]), 400),
        ("POST", "/v1/responses", body(input=[{"role": "wizard", "content": "x"}]), 400),
        ("POST", "/v1/responses", body(input=[{"role": "user", "content": 7}]), 400),
        (
            "POST",
            "/v1/responses",
            body(input=[{"role": "user", "content": [{"type": "input_audio"}]}]),
            400,
        ),
        ("POST", "/v1/responses", body(input=[{"type": "item_reference"}]), 400),
        (
            "POST",
            "/v1/responses",
            body(input=[{"type": "item_reference", "id": "msg_" + HEX}]),
            (400, 404),
        ),
        (
            "POST",
            "/v1/responses",
            body(input=[{"type": "item_reference", "id": bob["output_item"]}]),
            (400, 404),
        ),
        (
            "POST",
            "/v1/responses",
            body(input=[{"type": "item_reference", "id": bob["item"]}]),
            (400, 404),
        ),
        ("POST", "/v1/responses", body(input=[{"type": "function_call_output"}]), 400),
        ("POST", "/v1/responses", deep, (400, 413)),
        ("POST", "/v1/responses", body(input=[{"role": "user", "content": "x"}] * 10_001), 400),
        ("POST", "/v1/responses", body(input="x" * 2_000_000), 413),
        *[("POST", "/v1/responses", body(metadata=m), 400) for m in BAD_METADATA],
        ("POST", "/v1/responses", body(max_output_tokens=-1), 400),
        ("POST", "/v1/responses", body(max_output_tokens="many"), 400),
        ("POST", "/v1/responses", body(max_output_tokens=10**30), 400),
        ("POST", "/v1/responses", body(temperature="hot"), 400),
        ("POST", "/v1/responses", body(temperature=50), 400),
        ("POST", "/v1/responses", body(stream="yes"), 400),
        ("POST", "/v1/responses", body(stream=True, temperature=-3), 400),
        ("POST", "/v1/responses", body(stream=True, input=[{"type": "telepathy"}]), 400),
        ("POST", "/v1/responses", body(store="maybe"), 400),
        ("POST", "/v1/responses", body(text={"format": {"type": "yaml"}}), 400),
        ("POST", "/v1/responses", body(truncation="sometimes"), 400),
        # What the reply's row keeps of the request must be storable on both engines.
        ("POST", "/v1/responses", body(user="a\u0000b"), 400),
        ("POST", "/v1/responses", body(model="m\u0000"), (400, 404)),
        ("POST", "/v1/responses", body(tool_choice={"type": "function", "name": "\u0000"}), 400),
        ("POST", "/v1/responses", body(reasoning={"effort": "\u0000"}), 400),
        (
            "POST",
            "/v1/responses",
            body(text={"format": {"type": "json_schema", "name": "n", "schema": {"a": "\u0000"}}}),
            400,
        ),
        (
            "POST",
            "/v1/responses",
            body(text={"format": {"type": "json_schema", "name": "n", "schema": {"a": 10**30}}}),
            400,
        ),
        ("POST", "/v1/responses", body(conversation=7), 400),
        ("POST", "/v1/responses", body(conversation={"name": "x"}), 400),
        (
            "POST",
            "/v1/responses",
            body(previous_response_id=bob["response"], conversation=bob["conversation"]),
            400,
        ),
        ("POST", "/v1/responses", body(previous_response_id=7), 400),
        *[
            ("POST", "/v1/responses", body(previous_response_id=bad), (400, 404))
            for bad in [*BAD_IDS, *ODD_IDS, bob["response"]]
        ],
        *[
            ("POST", "/v1/responses", body(conversation=bad), (400, 404))
            for bad in ["conv_" + "z" * 32, "resp_" + HEX, "x" * 10_000, bob["conversation"]]
        ],
    ]
    await send_cases(alice.http, cases)
    assert (await Conversation.count(), await Message.count()) == before


async def test_responses_reads_refuse_hostile_queries(inprocess: InProcessGateway) -> None:
    alice, _, bob = await world(inprocess)
    mine = await alice.http.post("/v1/responses", json={"model": INPROCESS_MODEL, "input": "Hi"})
    assert mine.status_code == 200, mine.text
    items = f"/v1/responses/{mine.json()['id']}/input_items"
    cases: list[Case] = [
        *[
            (method, f"/v1/responses/{bad}", None, 404 if bad in BAD_IDS else (400, 404))
            for bad in BAD_IDS + ODD_IDS
            for method in ("GET", "DELETE")
        ],
        *[(method, f"/v1/responses/{bob['response']}", None, 404) for method in ("GET", "DELETE")],
        ("GET", f"/v1/responses/{bob['response']}/input_items", None, 404),
        ("POST", f"/v1/responses/{bob['response']}/cancel", None, 404),
        ("GET", "/v1/responses/" + "resp_" + HEX + "/input_items", None, 404),
        *[
            ("GET", f"{items}?{query}", None, status)
            for query, status in [
                ("limit=0", 400),
                ("limit=101", 400),
                ("limit=-1", 400),
                ("limit=abc", 400),
                ("limit=" + "9" * 40, 400),
                ("order=sideways", 400),
                ("after=msg_" + HEX, 404),
                ("after=" + "x" * 10_000, (400, 404)),
                (f"after={bob['item']}", 404),
                ("after=%00", (400, 404)),
                ("stream=maybe", 400),
            ]
        ],
    ]
    await send_cases(alice.http, cases)


async def test_conversations_refuse_hostile_input(inprocess: InProcessGateway) -> None:
    alice, _, bob = await world(inprocess)
    made = await alice.http.post("/openai/v1/conversations", json={})
    assert made.status_code == 200, made.text
    mine = f"/openai/v1/conversations/{made.json()['id']}"
    before = (await Conversation.count(), await Message.count())
    cases: list[Case] = [
        ("POST", "/openai/v1/conversations", b"[]", 400),
        ("POST", "/openai/v1/conversations", {"items": "hello"}, 400),
        (
            "POST",
            "/openai/v1/conversations",
            {"items": [{"role": "user", "content": "x"}] * 21},
            400,
        ),
        ("POST", "/openai/v1/conversations", {"items": [{"type": "telepathy"}]}, 400),
        ("POST", "/openai/v1/conversations", {"items": [{"role": "wizard", "content": "x"}]}, 400),
        (
            "POST",
            "/openai/v1/conversations",
            {"items": [{"type": "item_reference", "id": bob["item"]}]},
            (400, 404),
        ),
        *[("POST", "/openai/v1/conversations", {"metadata": m}, 400) for m in BAD_METADATA],
        *[("POST", mine, {"metadata": m}, 400) for m in BAD_METADATA],
        ("POST", mine, {}, 400),
        ("POST", f"{mine}/items", {"items": []}, 400),
        ("POST", f"{mine}/items", {"items": [{"type": "telepathy"}]}, 400),
        (
            "POST",
            f"{mine}/items",
            {"items": [{"type": "item_reference", "id": "msg_" + HEX}]},
            (400, 404),
        ),
        *[
            ("GET", f"{mine}/items?{query}", None, status)
            for query, status in [
                ("limit=0", 400),
                ("limit=101", 400),
                ("limit=-5", 400),
                ("limit=ten", 400),
                ("limit=" + "9" * 40, 400),
                ("order=random", 400),
                ("after=msg_" + HEX, 404),
                ("after=conv_" + HEX, 404),
                ("after=" + "é" * 5_000, (400, 404)),
                (f"after={bob['item']}", 404),
                ("after=msg_%00", (400, 404)),
                ("include[]=%00", (200, 400)),
            ]
        ],
        *[
            (method, f"/openai/v1/conversations/{bad}{tail}", body, status)
            for bad, status in [
                *[(bad, 404) for bad in [*BAD_IDS, "conv_" + "g" * 32, bob["conversation"]]],
                *[(bad, (400, 404)) for bad in ODD_IDS],
            ]
            for method, tail, body in [
                ("GET", "", None),
                ("POST", "", {"metadata": {}}),
                ("DELETE", "", None),
                ("GET", "/items", None),
                ("POST", "/items", {"items": [{"role": "user", "content": "x"}]}),
            ]
        ],
        *[
            (method, f"{mine}/items/{bad}", None, (400, 404) if bad in ODD_IDS else 404)
            for bad in [*BAD_IDS, *ODD_IDS, bob["item"]]
            for method in ("GET", "DELETE")
        ],
    ]
    await send_cases(alice.http, cases)
    assert (await Conversation.count(), await Message.count()) == before


async def test_stored_completions_and_n_refuse_hostile_input(inprocess: InProcessGateway) -> None:
    alice, _, bob = await world(inprocess)
    before = (await Conversation.count(), await Message.count())

    def chat(**fields: Any) -> dict[str, Any]:
        return {"model": INPROCESS_MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}

    filters = "&".join(f"metadata[k{i}]=v" for i in range(17))
    cases: list[Case] = [
        *[("POST", "/v1/chat/completions", chat(n=n), 400) for n in (0, -1, 17, 10**30, "2", 2.5)],
        *[("POST", "/v1/chat/completions", chat(n=n, stream=True), 400) for n in (0, 17)],
        ("POST", "/v1/chat/completions", chat(stream=True, stream_options=7), 400),
        ("POST", "/v1/chat/completions", chat(stream="yes"), 400),
        ("POST", "/v1/chat/completions", chat(store="yes"), 400),
        *[
            ("POST", "/v1/chat/completions", chat(store=True, metadata=m), 400)
            for m in BAD_METADATA
        ],
        *[
            ("GET", f"/v1/chat/completions?{query}", None, status)
            for query, status in [
                ("limit=0", 400),
                ("limit=101", 400),
                ("limit=-1", 400),
                ("limit=lots", 400),
                ("limit=" + "9" * 40, 400),
                ("order=up", 400),
                ("after=chatcmpl-" + HEX, 404),
                ("after=" + "x" * 10_000, (400, 404)),
                (f"after={bob['completion']}", 404),
                (filters, 400),
                ("model=%00", (200, 400)),
                ("model=" + "m" * 10_000, (200, 400)),
                ("after=chatcmpl-%00", (400, 404)),
                ("metadata[k]=%00", 400),
                ("metadata[%00]=v", 400),
                ("metadata[" + "k" * 100 + "]=v", 400),
                ("metadata[k]=" + "v" * 10_000, 400),
                ("metadata[]=v", (200, 400)),
                ("metadata[k=v", (200, 400)),
            ]
        ],
        *[
            (method, f"/v1/chat/completions/{bad}{tail}", body, status)
            for bad, status in [
                *[(bad, 404) for bad in [*BAD_IDS, "chatcmpl-" + "G" * 32, bob["completion"]]],
                *[(bad, (400, 404)) for bad in ODD_IDS],
            ]
            for method, tail, body in [
                ("GET", "", None),
                ("POST", "", {"metadata": {"a": "b"}}),
                ("DELETE", "", None),
                ("GET", "/messages", None),
            ]
        ],
    ]
    await send_cases(alice.http, cases)
    mine = await alice.http.post("/v1/chat/completions", json=chat(store=True))
    assert mine.status_code == 200, mine.text
    path = f"/v1/chat/completions/{mine.json()['id']}"
    await send_cases(
        alice.http,
        [
            *[("POST", path, {"metadata": m}, 400) for m in BAD_METADATA],
            ("POST", path, {}, 400),
            *[
                ("GET", f"{path}/messages?{query}", None, status)
                for query, status in [
                    ("limit=0", 400),
                    ("limit=101", 400),
                    ("order=sideways", 400),
                    ("after=msg_" + HEX, 404),
                ]
            ],
        ],
    )
    # One more conversation and two messages: alice's own stored completion, nothing else.
    assert (await Conversation.count(), await Message.count()) == (before[0] + 1, before[1] + 2)


async def test_key_limits_expiry_and_access_refuse_hostile_input(
    inprocess: InProcessGateway,
) -> None:
    alice = await inprocess.caller("alice")
    limits = f"/v1/keys/{alice.key_id}/limits"
    key = f"/v1/keys/{alice.key_id}"
    cases: list[Case] = [
        *[
            ("PUT", limits, {field: value}, 400)
            for field in ("requests_per_minute", "tokens_per_minute", "max_concurrent")
            for value in (-1, 0, "10", 10**30, 1.5)
        ],
        ("PUT", limits, {"tokens_per_day": -5}, 400),
        ("PUT", limits, {"bananas": 3}, 400),
        ("PUT", limits, b"[]", 400),
        ("PUT", limits, b"{", 400),
        *[
            ("PUT", f"/v1/keys/{bad}/limits", {"requests_per_minute": 1}, status)
            for bad, status in [
                ("00000000-0000-0000-0000-000000000000", 404),
                ("not-a-uuid", (400, 404)),
                ("x" * 10_000, (400, 404)),
            ]
        ],
        ("PATCH", key, {"expires_at": "yesterday"}, 400),
        ("PATCH", key, {"expires_at": 7}, 400),
        ("PATCH", key, {"allowed_models": "all"}, 400),
        ("PATCH", key, {"allowed_models": [7]}, 400),
        ("PATCH", key, {"allowed_configs": {"a": 1}}, 400),
        ("PATCH", key, {"allowed_configs": ["x" * 10_000]}, 400),
        ("PATCH", key, {"allowed_models": ["m\u0000"]}, 400),
        ("PATCH", key, {"allowed_models": [f"m{i}" for i in range(100_000)]}, (400, 413)),
        ("POST", "/v1/keys", {"name": "k", "allowed_configs": "base"}, 400),
        ("POST", "/v1/keys", {"name": "k", "expires_at": "2026-13-45T00:00:00Z"}, 400),
    ]
    misses = []
    for method, path, body, status in cases:
        content = body if isinstance(body, bytes) else None
        response = await inprocess.admin.request(
            method,
            path,
            json=None if content is not None else body,
            content=content,
            headers={"content-type": "application/json"} if content is not None else None,
        )
        wanted = (status,) if isinstance(status, int) else status
        miss = None
        for one in wanted:
            miss = chat_problem(response, one)
            if miss is None:
                break
        if miss is not None:
            misses.append(f"{method} {path[:60]} {json.dumps(body, default=str)[:80]}: {miss}")
    assert not misses, "\n".join(misses)
