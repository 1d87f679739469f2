"""One API: one list envelope and cursor, named errors, archived configs with a way back,
PUT and PATCH, strict numbers, HTTP semantics (405, HEAD, OPTIONS), and an OpenAPI document
that says what the server does. In process, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from functions.core.web.docs import NO_NUL
from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import InProcessGateway
from tests.support.process import REPO_ROOT, kill_group, start_async


async def config(gateway: InProcessGateway, name: str, **fields: Any) -> dict[str, Any]:
    response = await gateway.admin.post(
        "/v1/configs", json={"name": name, "model": INPROCESS_MODEL, **fields}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def conversation(gateway: InProcessGateway, **fields: Any) -> dict[str, Any]:
    response = await gateway.admin.post("/v1/conversations", json=fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def every_page(client: httpx.AsyncClient, url: str, **params: Any) -> list[list[Any]]:
    """Follow ``next_cursor`` (given back as ``cursor``) to the end; the pages' items."""
    pages: list[list[Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(url, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"data", "next_cursor"}
        pages.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor does not advance"


async def test_every_list_has_one_envelope_and_takes_its_cursor_back(
    inprocess: InProcessGateway,
) -> None:
    for name in ("a", "b", "c"):
        await config(inprocess, name, is_default=name == "a")
    for temperature in (0.1, 0.2):
        patched = await inprocess.admin.patch("/v1/configs/a", json={"temperature": temperature})
        assert patched.status_code == 200, patched.text
    for _ in range(2):
        await inprocess.caller("member")
    conv = await conversation(inprocess)
    await conversation(inprocess)
    await conversation(inprocess)
    sent = await inprocess.admin.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": "hi"}
    )
    assert sent.status_code == 201, sent.text

    expected = {
        "/v1/configs": 3,
        "/v1/configs/a/versions": 3,
        "/v1/keys": 3,
        "/v1/conversations": 3,
        f"/v1/conversations/{conv['id']}/messages": 2,
    }
    for url, count in expected.items():
        pages = await every_page(inprocess.admin, url, limit=1)
        items = [item for page in pages for item in page]
        assert len(pages) == count, url
        keys = [item.get("id") for item in items]
        assert len(set(keys)) == count, url
    pages = await every_page(inprocess.admin, "/v1/configs/a/versions")
    assert [v["version"] for page in pages for v in page] == [1, 2, 3]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/conversations?limti=1",
        "/v1/conversations?all=true",
        "/v1/configs?includeArchived=true",
        "/v1/configs/a?versoin=1",
        "/v1/configs/a/versions?page=2",
        "/v1/keys?active=true",
        "/v1/conversations/{conv}?x=1",
        "/v1/conversations/{conv}/messages?after=1",
        "/v1/conversations/{conv}/messages?offset=1",
        "/healthz?verbose=1",
        "/readyz?x=",
        "/metrics?format=json",
    ],
)
async def test_unknown_query_parameters_are_a_400_naming_them(
    inprocess: InProcessGateway, path: str
) -> None:
    await config(inprocess, "a", is_default=True)
    conv = await conversation(inprocess)
    response = await inprocess.admin.get(path.format(conv=conv["id"]))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    name = path.split("?")[1].split("=", maxsplit=1)[0]
    assert error["details"]["field"] == name
    assert repr(name) in error["message"]


async def test_archived_configs_can_be_read_and_restored_and_say_so(
    inprocess: InProcessGateway,
) -> None:
    await config(inprocess, "support", system_prompt="Be kind.", is_default=True)
    conv = await conversation(inprocess)
    assert (await inprocess.admin.delete("/v1/configs/support")).status_code == 200

    for method, body in [
        ("POST", {"name": "support", "model": INPROCESS_MODEL}),
        ("PUT", {"model": INPROCESS_MODEL}),
        ("PATCH", {"temperature": 0.5}),
    ]:
        url = "/v1/configs" if method == "POST" else "/v1/configs/support"
        response = await inprocess.admin.request(method, url, json=body)
        assert response.status_code == 409, (method, response.text)
        error = response.json()["error"]
        assert "archived" in error["message"]
        assert "/v1/configs/support/unarchive" in error["message"]
        assert error["details"]["archived"] is True

    send = await inprocess.admin.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": "hi"}
    )
    assert send.status_code == 400, send.text
    message = send.json()["error"]["message"]
    assert "/v1/configs/support/unarchive" in message
    assert "PATCH /v1/conversations" in message

    # Archived versions stay readable (the messages that used them point at them).
    assert (await inprocess.admin.get("/v1/configs/support")).json()["archived_at"]
    versions = await inprocess.admin.get("/v1/configs/support/versions")
    assert [v["version"] for v in versions.json()["data"]] == [1]

    restored = await inprocess.admin.post("/v1/configs/support/unarchive")
    assert restored.status_code == 200, restored.text
    assert restored.json()["archived_at"] is None
    again = await inprocess.admin.post("/v1/configs/support/unarchive")
    assert again.status_code == 200
    listed = (await inprocess.admin.get("/v1/configs")).json()["data"]
    assert [c["name"] for c in listed] == ["support"]
    resent = await inprocess.admin.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": "hi"}
    )
    assert resent.status_code == 201, resent.text
    missing = await inprocess.admin.post("/v1/configs/nothing/unarchive")
    assert missing.status_code == 404
    member = await inprocess.caller("member")
    assert (await member.http.post("/v1/configs/support/unarchive")).status_code == 403


async def test_put_replaces_the_whole_version_and_patch_changes_some_fields(
    inprocess: InProcessGateway,
) -> None:
    await config(inprocess, "terse", temperature=0.2, system_prompt="Answer in one sentence.")
    patched = await inprocess.admin.patch("/v1/configs/terse", json={"temperature": 0.7})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["version"], body["temperature"]) == (2, 0.7)
    assert body["system_prompt"] == "Answer in one sentence."
    cleared = await inprocess.admin.patch("/v1/configs/terse", json={"system_prompt": None})
    assert (cleared.json()["version"], cleared.json()["system_prompt"]) == (3, None)
    replaced = await inprocess.admin.put(
        "/v1/configs/terse", json={"model": INPROCESS_MODEL, "system_prompt": "New."}
    )
    assert (replaced.json()["version"], replaced.json()["temperature"]) == (4, None)
    for bad in ({"model": None}, {"temperature": 3}, {"nme": "x"}, {"extra": {"stream": True}}):
        response = await inprocess.admin.patch("/v1/configs/terse", json=bad)
        assert response.status_code == 400, (bad, response.text)
    assert (await inprocess.admin.patch("/v1/configs/nope", json={})).status_code == 404


async def test_without_a_default_a_conversation_needs_a_named_config(
    inprocess: InProcessGateway,
) -> None:
    response = await inprocess.admin.post("/v1/conversations", json={"title": "x"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == "config"
    assert '"config"' in error["message"]
    assert "is_default" in error["message"]
    await config(inprocess, "named")
    conv = await conversation(inprocess, config="named")
    assert conv["config"] == "named"
    unset = await inprocess.admin.patch(f"/v1/conversations/{conv['id']}", json={"config": None})
    assert unset.status_code == 400
    assert unset.json()["error"]["details"]["field"] == "config"


async def test_latency_and_ttft_are_floats_and_distinct(inprocess: InProcessGateway) -> None:
    await config(inprocess, "a", is_default=True)
    conv = await conversation(inprocess)
    url = f"/v1/conversations/{conv['id']}/messages"
    sent = await inprocess.admin.post(url, json={"content": "hi"})
    streamed = await inprocess.admin.post(url, json={"content": "again", "stream": True})
    done = [
        msgspec.json.decode(block.split("data: ", 1)[1])
        for block in streamed.text.strip().split("\n\n")
        if block.startswith("event: done")
    ]
    listed = (await inprocess.admin.get(url)).json()["data"]
    replies = [sent.json(), done[0]["message"], *(m for m in listed if m["role"] == "assistant")]
    for reply in replies:
        assert isinstance(reply["latency_ms"], float), reply
        assert isinstance(reply["ttft_ms"], float), reply
        assert reply["ttft_ms"] < reply["latency_ms"], reply


async def test_sse_error_events_carry_the_request_id(inprocess: InProcessGateway) -> None:
    await config(inprocess, "gone", model="a-model-nobody-serves", is_default=True)
    conv = await conversation(inprocess)
    response = await inprocess.admin.post(
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "hi", "stream": True},
        headers={"X-Request-Id": "trace-me-42"},
    )
    assert response.status_code == 200
    errors = [
        msgspec.json.decode(block.split("data: ", 1)[1])
        for block in response.text.strip().split("\n\n")
        if block.startswith("event: error")
    ]
    assert errors, response.text
    assert errors[0]["error"]["request_id"] == "trace-me-42"
    assert errors[0]["error"]["code"]


async def test_http_semantics_405_head_options_metrics_and_json_404s(
    inprocess: InProcessGateway,
) -> None:
    refused = await inprocess.admin.put("/v1/conversations")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert refused.json()["error"]["code"] == "method_not_allowed"

    for path in ("/healthz", "/v1/conversations", "/v1/configs", "/schema/openapi.json"):
        got = await inprocess.admin.get(path)
        head = await inprocess.admin.head(path)
        assert head.status_code == 200, (path, head.text)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
    assert (await inprocess.client(None).head("/v1/conversations")).status_code == 401

    options = await inprocess.admin.options(f"/v1/conversations/{uuid.uuid4()}")
    assert options.status_code == 204
    assert options.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH"

    metrics = await inprocess.admin.get("/metrics")
    assert metrics.headers["content-type"].count("charset") == 1
    assert metrics.headers["content-type"].startswith("text/plain; version=")

    for path in ("/schema/redoc", "/schema/elements", "/schema/nothing", "/nowhere"):
        missing = await inprocess.admin.get(path)
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        assert missing.json()["error"]["code"] == "not_found"


# The OpenAI door's paths (the Conversations API only under /openai/v1; the door's other
# routes are served there too, left out of the document).
OPENAI_DOOR = (
    "/openai/v1/",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
)


async def test_the_openapi_document_says_what_the_server_does(
    inprocess: InProcessGateway,
) -> None:
    document = (await inprocess.admin.get("/schema/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status in ("400", "500"):
                assert status in responses, (method, path, status)
            # The OpenAI door's routes answer in OpenAI's shape (its router's policy).
            door = path.startswith(OPENAI_DOOR)
            shape = "OpenAIErrorBody" if door else "ErrorBody"
            for status, response in responses.items():
                if int(status) >= 400 and (path, status) != ("/readyz", "503"):
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": f"#/components/schemas/{shape}"}, (path, status)
            if path.startswith("/v1/"):
                assert {"401", "503"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert "413" in responses, (method, path)
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                ref = body.get("$ref") or body["allOf"][0]["$ref"]
                # Strict bodies refuse unknown fields; the door's pass them on to vLLM.
                strict = schemas[ref.rsplit("/", 1)[1]].get("additionalProperties")
                assert strict is (None if door else False), (path, strict)
            for parameter in operation.get("parameters", []):
                if parameter["name"].endswith("_id") and parameter["name"] != "model_id":
                    # The door's ids are OpenAI's (resp_..., chatcmpl-...): strings.
                    wanted_format = "uuid" if not door else None
                    assert parameter["schema"].get("format") == wanted_format, (path, parameter)
    spec = schemas["LLMConfigSpec"]["properties"]
    wanted = {"type": "number", "maximum": 1, "exclusiveMinimum": 0}
    assert wanted.items() <= _flat(spec["top_p"]).items()
    assert _flat(spec["temperature"])["minimum"] == 0
    assert _flat(spec["model"])["pattern"] == NO_NUL
    assert schemas["ConversationOut"]["properties"]["id"]["format"] == "uuid"
    send = document["paths"]["/v1/conversations/{conversation_id}/messages"]["post"]
    assert set(send["responses"]["200"]["content"]) == {"text/event-stream"}
    assert set(send["responses"]["201"]["content"]) == {"application/json"}
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=1.0.0"]
    assert "post" in document["paths"]["/v1/configs/{name}/unarchive"]
    assert "patch" in document["paths"]["/v1/configs/{name}"]


# Errors the send route's code defines that never answer a send, and why.
NOT_SEND_ANSWERS = {
    "idempotency_race": "a claim lost to a send with the same key: that send is replayed",
    "stale_configuration_view": "the configuration changed meanwhile: it is resolved again",
    "migration_failed": "raised by `switchboard db migrate` alone",
    "forbidden": "admin routes alone; a send needs a chat key",
    "thread_moved": "a threaded send (the OpenAI door's) whose conversation moved on is "
    "stored as a branch instead; the chat API's sends are never threaded",
}
# Every SwitchboardError class the chat function's code can raise, as (status, code): those
# loaded by importing it alone (this interpreter has every module loaded).
SEND_PATH_ERRORS = """
import json, functions.chat.app
from functions.core.errors import SwitchboardError
def walk(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from walk(sub)
print(json.dumps(sorted({(c.status_code, c.code) for c in walk(SwitchboardError)})))
"""


async def send_path_errors() -> set[tuple[int, str]]:
    process = await start_async(
        sys.executable,
        "-c",
        SEND_PATH_ERRORS,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    finally:
        kill_group(process.pid)
    assert process.returncode == 0, err.decode()
    return {(status, code) for status, code in json.loads(out)}


async def test_every_error_a_send_can_answer_is_documented_on_its_route(
    inprocess: InProcessGateway,
) -> None:
    document = (await inprocess.admin.get("/schema/openapi.json")).json()
    send = document["paths"]["/v1/conversations/{conversation_id}/messages"]["post"]
    responses = send["responses"]
    raised = await send_path_errors()
    codes = {code for _, code in raised}
    assert set(NOT_SEND_ANSWERS) <= codes  # each exception still names a real error
    for code in ("shutting_down", "reply_not_recorded", "idempotent_request_failed"):
        assert code in codes
    for status, code in sorted(raised):
        if code in NOT_SEND_ANSWERS:
            continue
        assert str(status) in responses, (status, code)
        described = responses[str(status)]["description"]
        assert re.search(rf"(?<![\w]){code}(?![\w])", described), (status, code, described)
    # Not an admin route: "forbidden" cannot happen; a key's access lists can refuse.
    assert "model_not_allowed" in responses["403"]["description"]
    # Once a stream has begun, failures are events; a replayed failed key too.
    streamed = responses["200"]["description"]
    for code in ("shutting_down", "reply_not_recorded", "idempotent_request_failed"):
        assert code in streamed
    examples = responses["409"]["content"]["application/json"]["examples"].values()
    shown = {example["value"]["error"]["code"] for example in examples}
    assert {"idempotency_key_reused", "idempotent_request_in_progress"} <= shown
    assert "idempotent_request_failed" in shown


def _flat(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional field's schema."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") != "null":
            return dict(branch.items())
    return schema
