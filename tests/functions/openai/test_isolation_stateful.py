"""One key never sees another's stored state on the door, and a deletion holds everywhere.

Another key's response, conversation, item, stored chat completion and its messages are
answered exactly as an id that names nothing (the same status and body, the id aside),
on every route that takes one, and survive the other key's attempts to delete them. A
thing deleted through one API is gone through the others: Conversations, Responses, the
door's stored chat completions and the chat API read the same rows. In process (ASGI),
on PostgreSQL and SQLite.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.functions.conftest import INPROCESS_MODEL
from tests.support.inprocess import Caller, InProcessGateway


def hex_of(openai_id: str) -> str:
    return openai_id.rpartition("_")[2].rpartition("-")[2]


def as_missing(response: httpx.Response, shown: str) -> tuple[int, str]:
    """The status and body with the id the caller sent (and the chat API's request id)
    taken out."""
    body = re.sub(r'"request_id":"[0-9a-f]+"', "", response.text)
    return response.status_code, body.replace(shown, "<id>")


async def setup(gateway: InProcessGateway) -> tuple[Caller, Caller]:
    response = await gateway.admin.post(
        "/v1/configs", json={"name": "base", "model": INPROCESS_MODEL, "is_default": True}
    )
    assert response.status_code == 201, response.text
    return await gateway.caller("alice"), await gateway.caller("bob")


async def one_of_each(caller: Caller) -> dict[str, str]:
    """A conversation holding a response and a stored chat completion, all ``caller``'s."""
    http = caller.http
    created = await http.post(
        "/openai/v1/conversations", json={"items": [{"role": "user", "content": "Hey"}]}
    )
    assert created.status_code == 200, created.text
    conv = created.json()["id"]
    made = await http.post(
        "/v1/responses", json={"model": INPROCESS_MODEL, "input": "Hi", "conversation": conv}
    )
    assert made.status_code == 200, made.text
    answer = made.json()["output"][0]["content"][0]["text"]
    history = [
        {"role": "user", "content": "Hey"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Hello"},
    ]
    completion = await http.post(
        "/v1/chat/completions",
        headers={"X-Switchboard-Conversation": str(uuid.UUID(hex=hex_of(conv)))},
        json={
            "model": INPROCESS_MODEL,
            "messages": history,
            "store": True,
        },
    )
    assert completion.status_code == 200, completion.text
    assert completion.headers["x-switchboard-conversation"] == str(uuid.UUID(hex=hex_of(conv)))
    items = await http.get(f"/openai/v1/conversations/{conv}/items?order=asc")
    assert items.status_code == 200, items.text
    return {
        "conversation": conv,
        "conversation_uuid": str(uuid.UUID(hex=hex_of(conv))),
        "first_item": items.json()["data"][0]["id"],
        "response": made.json()["id"],
        "response_item": "msg_" + hex_of(made.json()["id"]),
        "completion": completion.json()["id"],
        "completion_item": "msg_" + hex_of(completion.json()["id"]),
    }


def probes(ids: dict[str, str], mine: dict[str, str]) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, the id shown) for every route that looks an id up."""
    conv, resp, cc = ids["conversation"], ids["response"], ids["completion"]
    item = ids["response_item"]
    new = {"model": INPROCESS_MODEL, "input": "Hi"}
    return [
        ("GET", f"/v1/responses/{resp}", None, resp),
        ("DELETE", f"/v1/responses/{resp}", None, resp),
        ("GET", f"/v1/responses/{resp}/input_items", None, resp),
        ("POST", f"/v1/responses/{resp}/cancel", None, resp),
        ("GET", f"/v1/responses/{mine['response']}/input_items?after={item}", None, item),
        ("POST", "/v1/responses", {**new, "previous_response_id": resp}, resp),
        ("POST", "/v1/responses", {**new, "conversation": conv}, conv),
        ("POST", "/v1/responses", {**new, "conversation": {"id": conv}}, conv),
        (
            "POST",
            "/v1/responses",
            {**new, "input": [{"type": "item_reference", "id": item}]},
            item,
        ),
        ("GET", f"/openai/v1/conversations/{conv}", None, conv),
        ("POST", f"/openai/v1/conversations/{conv}", {"metadata": {"a": "b"}}, conv),
        ("DELETE", f"/openai/v1/conversations/{conv}", None, conv),
        ("GET", f"/openai/v1/conversations/{conv}/items", None, conv),
        (
            "POST",
            f"/openai/v1/conversations/{conv}/items",
            {"items": [{"role": "user", "content": "x"}]},
            conv,
        ),
        ("GET", f"/openai/v1/conversations/{mine['conversation']}/items/{item}", None, item),
        ("DELETE", f"/openai/v1/conversations/{mine['conversation']}/items/{item}", None, item),
        ("GET", f"/openai/v1/conversations/{mine['conversation']}/items?after={item}", None, item),
        (
            "POST",
            "/openai/v1/conversations",
            {"items": [{"type": "item_reference", "id": item}]},
            item,
        ),
        ("GET", f"/v1/chat/completions/{cc}", None, cc),
        ("POST", f"/v1/chat/completions/{cc}", {"metadata": {"a": "b"}}, cc),
        ("DELETE", f"/v1/chat/completions/{cc}", None, cc),
        ("GET", f"/v1/chat/completions/{cc}/messages", None, cc),
        ("GET", f"/v1/chat/completions?after={cc}", None, cc),
        ("GET", f"/v1/conversations/{ids['conversation_uuid']}", None, ids["conversation_uuid"]),
        (
            "GET",
            f"/v1/conversations/{ids['conversation_uuid']}/messages",
            None,
            ids["conversation_uuid"],
        ),
    ]


def fresh(ids: dict[str, str]) -> dict[str, str]:
    """Ids of the same kinds as ``ids`` that name nothing."""
    out = {}
    for name, value in ids.items():
        row = uuid.uuid4()
        if name == "conversation_uuid":
            out[name] = str(row)
        else:
            out[name] = value.removesuffix(hex_of(value)) + row.hex
    out["response_item"] = "msg_" + hex_of(out["response"])
    return out


async def test_another_keys_ids_answer_as_missing_ones(inprocess: InProcessGateway) -> None:
    alice, bob = await setup(inprocess)
    bobs, mine = await one_of_each(bob), await one_of_each(alice)
    nothing = fresh(bobs)
    misses = []
    for (method, path, body, shown), (_, path_0, body_0, shown_0) in zip(
        probes(bobs, mine), probes(nothing, mine), strict=True
    ):
        theirs = await alice.http.request(method, path, json=body)
        missing = await alice.http.request(method, path_0, json=body_0)
        if theirs.status_code not in (400, 404) or as_missing(theirs, shown) != as_missing(
            missing, shown_0
        ):
            misses.append(f"{method} {path}: {theirs.status_code} {theirs.text[:200]}")
    assert not misses, "\n".join(misses)
    listed = await alice.http.get("/v1/chat/completions")
    assert [c["id"] for c in listed.json()["data"]] == [mine["completion"]]
    # Nothing of bob's was touched by alice's deletes and updates.
    for path in (
        f"/v1/responses/{bobs['response']}",
        f"/openai/v1/conversations/{bobs['conversation']}/items/{bobs['response_item']}",
        f"/v1/chat/completions/{bobs['completion']}",
    ):
        kept = await bob.http.get(path)
        assert kept.status_code == 200, (path, kept.text)
    conversation = await bob.http.get(f"/openai/v1/conversations/{bobs['conversation']}")
    assert conversation.json()["metadata"] == {}
    items = await bob.http.get(f"/openai/v1/conversations/{bobs['conversation']}/items")
    assert len(items.json()["data"]) == 5


DELETIONS = {
    "conversations": ("DELETE", "/openai/v1/conversations/{conversation}"),
    "chat-api": ("DELETE", "/v1/conversations/{conversation_uuid}"),
}


@pytest.mark.parametrize("deletion", sorted(DELETIONS))
async def test_a_deleted_conversation_is_gone_from_every_route(
    inprocess: InProcessGateway, deletion: str
) -> None:
    alice, _ = await setup(inprocess)
    ids = await one_of_each(alice)
    method, path = DELETIONS[deletion]
    deleted = await alice.http.request(method, path.format(**ids))
    assert deleted.status_code in (200, 204), deleted.text
    gone = [
        f"/v1/responses/{ids['response']}",
        f"/v1/responses/{ids['response']}/input_items",
        f"/openai/v1/conversations/{ids['conversation']}",
        f"/openai/v1/conversations/{ids['conversation']}/items",
        f"/v1/chat/completions/{ids['completion']}",
        f"/v1/chat/completions/{ids['completion']}/messages",
        f"/v1/conversations/{ids['conversation_uuid']}",
    ]
    for read in gone:
        response = await alice.http.get(read)
        assert response.status_code == 404, (read, response.text)
    listed = await alice.http.get("/v1/chat/completions")
    assert listed.json()["data"] == []
    again = await alice.http.post(
        "/v1/responses",
        json={"model": INPROCESS_MODEL, "input": "Hi", "previous_response_id": ids["response"]},
    )
    assert again.status_code == 404, again.text
    assert again.json()["error"]["param"] == "previous_response_id"


async def test_a_deleted_item_or_response_is_gone_from_every_route(
    inprocess: InProcessGateway,
) -> None:
    alice, _ = await setup(inprocess)
    ids = await one_of_each(alice)
    conv = f"/openai/v1/conversations/{ids['conversation']}"
    # The completion's reply deleted as an item: the stored completion goes with it.
    deleted = await alice.http.delete(f"{conv}/items/{ids['completion_item']}")
    assert deleted.status_code == 200, deleted.text
    for read in (
        f"/v1/chat/completions/{ids['completion']}",
        f"/v1/chat/completions/{ids['completion']}/messages",
        f"{conv}/items/{ids['completion_item']}",
    ):
        response = await alice.http.get(read)
        assert response.status_code == 404, (read, response.text)
    assert (await alice.http.get("/v1/chat/completions")).json()["data"] == []
    # The response deleted through Responses: its reply and input are gone as items.
    deleted = await alice.http.delete(f"/v1/responses/{ids['response']}")
    assert deleted.status_code == 200, deleted.text
    for read in (
        f"/v1/responses/{ids['response']}",
        f"/v1/responses/{ids['response']}/input_items",
        f"{conv}/items/{ids['response_item']}",
    ):
        response = await alice.http.get(read)
        assert response.status_code == 404, (read, response.text)
    # What is left: the first turn and the completion's question (an item is one message).
    left = await alice.http.get(f"{conv}/items?order=asc")
    assert [item["content"][0]["text"] for item in left.json()["data"]] == ["Hey", "Hello"]
    assert left.json()["first_id"] == ids["first_item"]
    messages = await alice.http.get(f"/v1/conversations/{ids['conversation_uuid']}/messages")
    assert [m["content"] for m in messages.json()["data"]] == ["Hey", "Hello"]
    # And deleting what is gone is the same 404 as deleting what never was.
    again = await alice.http.delete(f"/v1/responses/{ids['response']}")
    never_id = f"resp_{uuid.uuid4().hex}"
    never = await alice.http.delete(f"/v1/responses/{never_id}")
    assert again.status_code == 404, again.text
    assert as_missing(again, ids["response"]) == as_missing(never, never_id)
