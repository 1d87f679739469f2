"""The chat function end to end: conversations, sends, streams, isolation, concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from functions.core.db.tables import Message
from tests.functions.conftest import Api
from tests.support.simulator import SimulatorProcess


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], msgspec.json.decode(lines["data"])))
    return events


async def test_conversation_crud_and_pagination(api: Api) -> None:
    await api.create_config("assistant", is_default=True)
    created = [await api.conversation(title=f"t{i}", metadata={"i": i}) for i in range(3)]
    assert all(c["config"] == "assistant" for c in created)

    page = (await api.alice.get("/v1/conversations", params={"limit": 2})).json()
    assert [c["title"] for c in page["data"]] == ["t2", "t1"]
    rest = (
        await api.alice.get("/v1/conversations", params={"limit": 2, "cursor": page["next_cursor"]})
    ).json()
    assert [c["title"] for c in rest["data"]] == ["t0"]
    assert rest["next_cursor"] is None

    conv_id = created[0]["id"]
    patched = await api.alice.patch(f"/v1/conversations/{conv_id}", json={"title": "renamed 🎉"})
    assert patched.status_code == 200
    assert patched.json()["title"] == "renamed 🎉"
    assert patched.json()["metadata"] == {"i": 0}
    got = await api.alice.get(f"/v1/conversations/{conv_id}")
    assert got.json()["title"] == "renamed 🎉"

    deleted = await api.alice.delete(f"/v1/conversations/{conv_id}")
    assert deleted.status_code == 204
    assert (await api.alice.get(f"/v1/conversations/{conv_id}")).status_code == 404


async def test_send_returns_the_stored_reply(api: Api) -> None:
    config = await api.create_config("terse", system_prompt="Be terse.", temperature=0.3)
    conv = await api.conversation(config="terse")
    response = await api.alice.post(
        f"/v1/conversations/{conv['id']}/messages", json={"content": "Hello, 세계 🌍"}
    )
    assert response.status_code == 201, response.text
    reply = response.json()
    assert reply["role"] == "assistant"
    assert reply["status"] == "complete"
    assert reply["content"]
    assert reply["seq"] == 2
    assert reply["config"] == {"id": config["id"], "name": "terse", "version": 1}
    assert reply["model"] == "sim-model"
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert reply["latency_ms"] > 0
    assert reply["ttft_ms"] is not None
    assert reply["finish_reason"] in ("stop", "length")
    assert response.headers["x-request-id"]

    history = (await api.alice.get(f"/v1/conversations/{conv['id']}/messages")).json()["data"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "Hello, 세계 🌍"),
        ("assistant", reply["content"]),
    ]
    # The same prompt and seed give the same answer (the simulator is deterministic), so a
    # second conversation proves the system prompt and config reached the model unchanged.
    again = await api.conversation(config="terse")
    second = await api.alice.post(
        f"/v1/conversations/{again['id']}/messages", json={"content": "Hello, 세계 🌍"}
    )
    assert second.json()["content"] == reply["content"]


async def test_the_prompt_grows_with_the_history(api: Api) -> None:
    await api.create_config("chatty", is_default=True)
    conv = await api.conversation()
    prompts = []
    for text in ("one", "two", "three"):
        reply = (
            await api.alice.post(f"/v1/conversations/{conv['id']}/messages", json={"content": text})
        ).json()
        prompts.append(reply["usage"]["prompt_tokens"])
    assert prompts[0] < prompts[1] < prompts[2]


async def test_per_request_overrides_reach_the_model(api: Api) -> None:
    await api.create_config("long", model="sim-model")
    conv = await api.conversation(config="long")
    reply = (
        await api.alice.post(
            f"/v1/conversations/{conv['id']}/messages", json={"content": "hi", "max_tokens": 2}
        )
    ).json()
    assert reply["usage"]["completion_tokens"] == 2
    assert reply["finish_reason"] == "length"


async def test_streamed_reply_events_and_stored_result(api: Api) -> None:
    await api.create_config("streamer", is_default=True)
    conv = await api.conversation()
    async with api.alice.stream(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "Stream to me, 안녕 👋", "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    events = parse_sse(raw)
    names = [name for name, _ in events]
    assert names[0] == "message"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}
    started = events[0][1]
    assert started["user_message"]["content"] == "Stream to me, 안녕 👋"
    assert started["assistant_message"]["status"] == "pending"
    done = events[-1][1]["message"]
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert done["content"] == text
    assert done["status"] == "complete"
    assert done["usage"]["completion_tokens"] == 12
    assert done["ttft_ms"] is not None
    assert done["id"] == started["assistant_message"]["id"]
    stored = (await api.alice.get(f"/v1/conversations/{conv['id']}/messages")).json()["data"]
    assert stored[-1]["content"] == text


async def test_stream_deltas_arrive_as_they_are_generated(api: Api) -> None:
    """Not buffered: the first delta arrives long before the last (60 tokens x 30 ms)."""
    await api.create_config("slow", model="slow-model")
    conv = await api.conversation(config="slow")
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    async with api.alice.stream(
        "POST", f"/v1/conversations/{conv['id']}/messages", json={"content": "go", "stream": True}
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: delta"):
                arrivals.append(loop.time())
    assert len(arrivals) >= 30
    assert arrivals[-1] - arrivals[0] > 1.0


async def _message_rows(api: Api, conversation_id: str) -> list[dict[str, Any]]:
    return (
        await Message.select(
            Message.seq, Message.role, Message.status, Message.content, Message.error_code
        )
        .where(Message.conversation == conversation_id)
        .order_by(Message.seq)
    )


async def test_disconnect_aborts_upstream_and_stores_a_cancelled_partial(
    api: Api, simulators: dict[str, SimulatorProcess]
) -> None:
    slow = simulators["slow-model"]
    slow.reset()
    await api.create_config("slow", model="slow-model")
    conv = await api.conversation(config="slow")
    deltas = 0
    async with api.alice.stream(
        "POST", f"/v1/conversations/{conv['id']}/messages", json={"content": "go", "stream": True}
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: delta"):
                deltas += 1
                if deltas == 5:
                    break  # leaving the block closes the connection mid-stream
    stats = await slow.wait_for_async(lambda s: s["in_flight"] == 0 and s["aborted"] >= 1)
    assert stats["aborted"] == 1
    for _ in range(100):
        rows = await _message_rows(api, conv["id"])
        if rows[-1]["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    user, reply = rows
    assert (user["status"], reply["status"], reply["error_code"]) == (
        "complete",
        "cancelled",
        "cancelled",
    )
    assert reply["content"]  # the part that was streamed before the client left


async def test_concurrent_sends_to_one_conversation_are_serialised(api: Api) -> None:
    await api.create_config("busy", is_default=True)
    conv = await api.conversation()
    url = f"/v1/conversations/{conv['id']}/messages"
    replies = await asyncio.gather(
        *(api.alice.post(url, json={"content": f"message {i}"}) for i in range(5))
    )
    assert [r.status_code for r in replies] == [201] * 5
    history = (await api.alice.get(url)).json()["data"]
    assert [m["seq"] for m in history] == list(range(1, 11))
    assert [m["role"] for m in history] == ["user", "assistant"] * 5
    # Each reply saw all earlier turns: its prompt is longer than the previous reply's.
    prompts = [m["usage"]["prompt_tokens"] for m in history if m["role"] == "assistant"]
    assert prompts == sorted(prompts)
    assert len(set(prompts)) == 5


async def test_another_keys_conversation_is_not_found_everywhere(api: Api) -> None:
    await api.create_config("private", is_default=True)
    conv = await api.conversation(api.alice, title="alice's")
    base = f"/v1/conversations/{conv['id']}"
    attempts = [
        await api.bob.get(base),
        await api.bob.patch(base, json={"title": "mine now"}),
        await api.bob.delete(base),
        await api.bob.get(f"{base}/messages"),
        await api.bob.post(f"{base}/messages", json={"content": "hi"}),
        await api.bob.post(f"{base}/messages", json={"content": "hi", "stream": True}),
    ]
    for response in attempts:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert (await api.bob.get("/v1/conversations")).json()["data"] == []
    assert (await api.alice.get(base)).json()["title"] == "alice's"
    assert await _message_rows(api, conv["id"]) == []


async def test_without_any_config_a_conversation_is_a_clear_error(api: Api) -> None:
    response = await api.alice.post("/v1/conversations", json={})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "no default configuration" in error["message"]
    assert error["details"]["field"] == "config"


async def test_message_validation_names_the_field(api: Api) -> None:
    await api.create_config("v", is_default=True)
    conv = await api.conversation()
    url = f"/v1/conversations/{conv['id']}/messages"
    cases = [
        ({"content": ""}, "content"),
        ({"content": "x", "temperature": 9}, "temperature"),
        ({"content": "x", "stream": "yes"}, "stream"),
        ({"content": "x", "tempreature": 1}, "tempreature"),
        ({}, "content"),
    ]
    for body, field in cases:
        response = await api.alice.post(url, json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert field in error["message"], error
    assert await _message_rows(api, conv["id"]) == []


async def test_the_openapi_schema_documents_every_endpoint(api: Api) -> None:
    schema = (await api.anonymous.get("/schema/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/v1/conversations",
        "/v1/conversations/{conversation_id}",
        "/v1/conversations/{conversation_id}/messages",
        "/v1/configs",
        "/v1/configs/{name}",
        "/v1/keys",
        "/v1/keys/{key_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    send = paths["/v1/conversations/{conversation_id}/messages"]["post"]
    assert {"201", "400", "401", "404", "502", "503", "504"} <= set(send["responses"])
    assert "BearerAuth" in schema["components"]["securitySchemes"]
    ui = await api.anonymous.get("/schema/swagger")
    assert ui.status_code == 200
    assert "swagger" in ui.text.lower()


def test_parse_sse_reads_named_events() -> None:
    assert parse_sse('event: delta\ndata: {"text":"a"}\n\n') == [("delta", {"text": "a"})]


async def test_readyz_reports_the_simulated_llm(api: Api) -> None:
    ready = (await api.anonymous.get("/readyz")).json()
    assert ready["database"]["status"] == "ok"
    assert ready["llm"]["status"] == "simulated"
    assert len(ready["llm"]["upstreams"]) == 5


async def test_metrics_count_requests_and_replies(api: Api) -> None:
    await api.create_config("m", is_default=True)
    conv = await api.conversation()
    await api.alice.post(f"/v1/conversations/{conv['id']}/messages", json={"content": "hi"})
    text = (await api.anonymous.get("/metrics")).text
    assert (
        'switchboard_http_requests_total{function="gateway",method="POST",route="/v1/conversations/{conversation_id}/messages",status="201"}'
        in text
    )
    assert 'switchboard_chat_replies_total{status="complete"}' in text
    assert "switchboard_llm_time_to_first_token_seconds_bucket" in text
    up = [line for line in text.splitlines() if line.startswith("switchboard_llm_upstream_state{")]
    assert len([line for line in up if 'state="up"' in line and line.endswith(" 1.0")]) == 5
    assert "switchboard_llm_upstream_in_flight{" in text


async def test_client_request_id_is_echoed_but_never_sent_upstream(api: Api) -> None:
    # vLLM keys running requests by X-Request-Id: the gateway sends an id of its own.
    await api.create_config("rid", is_default=True)
    conv = await api.conversation()
    response = await api.alice.post(
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "hi"},
        headers={"X-Request-Id": "trace-abc-123"},
    )
    assert response.headers["x-request-id"] == "trace-abc-123"
    upstream = response.json()["upstream_request_id"]
    assert upstream.startswith("chatcmpl-")
    assert "trace-abc-123" not in upstream
