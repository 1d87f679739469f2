"""The Responses API (``/v1/responses``) with the official ``openai`` SDK over a real
socket, the simulator behind, on PostgreSQL and SQLite: every response one exchange of a
conversation, continued by ``previous_response_id`` from stored state alone."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import openai
import pytest

from tests.functions.conftest import GATEWAY_ENV
from tests.functions.openai.conftest import Door, secret_of
from tests.support.gateway import GatewayProcess
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

MODEL = "sim-model"


def _text_of(body: dict[str, Any]) -> str:
    return "".join(
        part["text"] for message in body["messages"] for part in message.get("content", [])
    )


async def test_create_and_retrieve(door: Door) -> None:
    created = await door.alice.responses.create(
        model=MODEL, input="Hello there", instructions="Be brief.", metadata={"team": "a"}
    )
    assert created.id.startswith("resp_")
    assert created.status == "completed"
    assert created.output_text
    assert created.usage is not None
    assert created.usage.total_tokens > 0
    assert created.instructions == "Be brief."
    fetched = await door.alice.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.output_text == created.output_text
    assert fetched.metadata == {"team": "a"}
    assert fetched.instructions == "Be brief."
    sent = await door.last_request()
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]


async def _create(client: openai.AsyncOpenAI, **fields: Any) -> tuple[Any, str]:
    """A response and the conversation it was stored in (the placement header)."""
    raw = await client.responses.with_raw_response.create(model=MODEL, **fields)
    return raw.parse(), raw.headers["x-switchboard-conversation"]


async def test_chain_of_five_continues_from_stored_state(door: Door) -> None:
    first, conversation = await _create(
        door.alice, input="turn 1", instructions="Only for the first."
    )
    previous = first
    for turn in range(2, 6):
        previous, placed = await _create(
            door.alice, input=f"turn {turn}", previous_response_id=previous.id
        )
        assert placed == conversation  # appended: one conversation holds the chain
        assert previous.previous_response_id is not None
    sent = await door.last_request()
    roles = [message["role"] for message in sent["messages"]]
    # Instructions are not carried over; the history is the whole chain, from the store.
    assert roles == ["user", "assistant"] * 4 + ["user"]
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == [
        f"turn {n}" for n in range(1, 6)
    ]
    stored = await door.messages(conversation)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 5
    assert stored[-1]["content"] == previous.output_text


async def test_branch_from_an_earlier_response(door: Door) -> None:
    first, conversation = await _create(door.alice, input="root")
    second, _ = await _create(door.alice, input="left", previous_response_id=first.id)
    branch, placed = await _create(door.alice, input="right", previous_response_id=first.id)
    assert placed != conversation
    sent = await door.last_request()
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == ["root", "right"]
    # The branch holds its whole history; the original is untouched.
    assert [m["content"] for m in await door.messages(placed) if m["role"] == "user"] == [
        "root",
        "right",
    ]
    assert len(await door.messages(conversation)) == 4
    # Continuing the branch stays in the branch.
    _, again = await _create(door.alice, input="more", previous_response_id=branch.id)
    assert again == placed
    assert second.id != branch.id


async def test_item_reference_and_isolation(door: Door) -> None:
    first, _ = await _create(door.alice, input="remember this")
    item_id = first.output[0].id
    assert item_id.startswith("msg_")
    referenced, _ = await _create(
        door.alice,
        input=[
            {"type": "item_reference", "id": item_id},
            {"role": "user", "content": "and now?"},
        ],
    )
    sent = await door.last_request()
    assert sent["messages"] == [
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "and now?"},
    ]
    assert referenced.status == "completed"
    for unknown in (item_id, f"msg_{uuid.uuid4().hex}", "msg_nonsense"):
        with pytest.raises(openai.NotFoundError):
            await door.bob.responses.create(
                model=MODEL, input=[{"type": "item_reference", "id": unknown}]
            )


async def test_another_key_sees_nothing(door: Door) -> None:
    mine, _ = await _create(door.alice, input="private")
    for response_id in (mine.id, f"resp_{uuid.uuid4().hex}", "resp_x"):
        with pytest.raises(openai.NotFoundError):
            await door.bob.responses.retrieve(response_id)
        with pytest.raises(openai.NotFoundError):
            await door.bob.responses.delete(response_id)
        with pytest.raises(openai.NotFoundError):
            await door.bob.responses.input_items.list(response_id)
        with pytest.raises(openai.NotFoundError):
            await door.bob.responses.cancel(response_id)
        with pytest.raises(openai.NotFoundError):
            await door.bob.responses.create(
                model=MODEL, input="hi", previous_response_id=response_id
            )
    assert (await door.alice.responses.retrieve(mine.id)).output_text == mine.output_text


async def test_function_tools_round_trip_across_previous_response_id(door: Door) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    asked, conversation = await _create(door.alice, input="get_weather for Paris", tools=tools)
    calls = [item for item in asked.output if item.type == "function_call"]
    assert calls
    assert calls[0].name == "get_weather"
    assert asked.tools[0].name == "get_weather"  # type: ignore[union-attr]
    answered, placed = await _create(
        door.alice,
        previous_response_id=asked.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
    )
    assert placed == conversation
    assert answered.output_text
    sent = await door.last_request()
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id
    assert sent["messages"][2] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": calls[0].call_id,
    }
    assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_stream_events_parsed_by_the_sdk(door: Door) -> None:
    # The slow model streams a token at a time: deltas are relayed as they arrive (what
    # arrives together is passed on together).
    async with door.alice.responses.stream(model="slow-model", input="stream me") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 1  # relayed as it arrives
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert final.status == "completed"
    assert final.output_text
    fetched = await door.alice.responses.retrieve(final.id)
    assert fetched.output_text == final.output_text
    assert fetched.usage is not None
    assert fetched.usage.output_tokens > 0


async def test_streamed_function_call(door: Door) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    events = await door.alice.responses.create(
        model=MODEL, input="lookup the docs", tools=tools, stream=True
    )
    kinds, arguments = [], ""
    async for event in events:
        kinds.append(event.type)
        if event.type == "response.function_call_arguments.done":
            arguments = event.arguments
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert arguments


async def test_input_items_paging_and_delete(door: Door) -> None:
    first, conversation = await _create(door.alice, input="before")
    many, _ = await _create(
        door.alice,
        previous_response_id=first.id,
        input=[{"role": "user", "content": f"item {n}"} for n in range(5)],
    )
    listed = await door.alice.responses.input_items.list(many.id, order="asc", limit=2)
    texts = [item.content[0].text for item in listed.data]  # type: ignore[union-attr]
    assert texts == ["item 0", "item 1"]
    assert listed.has_more
    rest = await door.alice.responses.input_items.list(
        many.id, order="asc", limit=10, after=listed.data[-1].id
    )
    assert [i.content[0].text for i in rest.data] == ["item 2", "item 3", "item 4"]  # type: ignore[union-attr]
    assert not rest.has_more
    newest = await door.alice.responses.input_items.list(many.id, limit=1)
    assert newest.data[0].content[0].text == "item 4"  # type: ignore[union-attr]
    # Paged through by the SDK's auto-pagination, newest first.
    assert (
        len([item async for item in door.alice.responses.input_items.list(many.id, limit=2)]) == 5
    )

    deleted = await door.alice.responses.delete(many.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        await door.alice.responses.retrieve(many.id)
    # The history it continued stays: the first exchange, readable through the chat API.
    assert next(m["content"] for m in await door.messages(conversation)) == "before"
    assert len(await door.messages(conversation)) == 2


async def test_store_false_is_not_retrievable(door: Door) -> None:
    unstored = await door.alice.responses.create(model=MODEL, input="forget me", store=False)
    assert unstored.status == "completed"
    assert unstored.output_text
    with pytest.raises(openai.NotFoundError):
        await door.alice.responses.retrieve(unstored.id)
    assert await door.conversations() == []
    # Streamed as it arrives, parsed by the SDK, and not stored either.
    async with door.alice.responses.stream(
        model="slow-model", input="stream, forget", store=False
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds.count("response.output_text.delta") > 1
    assert final.output_text
    with pytest.raises(openai.NotFoundError):
        await door.alice.responses.retrieve(final.id)
    # Continuing a stored response without storing: the history is read, nothing written.
    kept, conversation = await _create(door.alice, input="kept")
    passing = await door.alice.responses.create(
        model=MODEL, input="passing", previous_response_id=kept.id, store=False
    )
    assert passing.output_text
    sent = await door.last_request()
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == ["kept", "passing"]
    assert len(await door.messages(conversation)) == 2


async def test_refusals(door: Door) -> None:
    with pytest.raises(openai.BadRequestError, match="background"):
        await door.alice.responses.create(model=MODEL, input="x", background=True)
    first, _ = await _create(door.alice, input="x")
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        await door.alice.responses.create(
            model=MODEL, input="x", previous_response_id=first.id, conversation="conv_x"
        )
    with pytest.raises(openai.BadRequestError, match="synchronous"):
        await door.alice.responses.cancel(first.id)
    with pytest.raises(openai.BadRequestError, match="background"):
        await door.alice.responses.retrieve(first.id, stream=True)
    with pytest.raises(openai.NotFoundError):
        await door.alice.responses.create(model="no-such-model", input="x")


async def test_chain_across_processes_and_a_restart(
    door: Door, backend_url: str, simulators: dict[str, SimulatorProcess]
) -> None:
    """Each turn sent at once after the last completed, through whichever process: the
    chain lives in the database, not in a process (vLLM keeps it in a dict per process)."""
    secret = secret_of(door.api.alice)
    other = GatewayProcess(
        backend_url, [sim.base_url for sim in simulators.values()], env=GATEWAY_ENV
    )
    first, conversation = await _create(door.alice, input="turn 1")
    second, _ = await _create(door.alice, input="turn 2", previous_response_id=first.id)
    previous = second
    with other:
        for turn in (3, 4):
            if turn == 4:
                other.stop()  # a restart: nothing of the chain was in the process
                other.start()
            client = openai.AsyncOpenAI(
                base_url=f"{other.root_url}/v1", api_key=secret, max_retries=0, timeout=scaled(30.0)
            )
            try:
                previous, placed = await _create(
                    client, input=f"turn {turn}", previous_response_id=previous.id
                )
            finally:
                await client.close()
            assert placed == conversation
    fifth, placed = await _create(door.alice, input="turn 5", previous_response_id=previous.id)
    assert placed == conversation
    sent = await door.last_request()
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == [
        f"turn {n}" for n in range(1, 6)
    ]
    assert len(await door.messages(conversation)) == 10
    assert fifth.previous_response_id == previous.id


async def test_appended_to_a_conversation_of_the_chat_api(door: Door) -> None:
    await door.api.create_config("responses-conv")
    started = await door.api.conversation(title="from the chat API", config="responses-conv")
    named = f"conv_{uuid.UUID(started['id']).hex}"
    first, placed = await _create(door.alice, input="into it", conversation=named)
    assert placed == started["id"]
    assert first.conversation is not None
    assert first.conversation.id == named
    second, placed = await _create(
        door.alice, input="again", conversation=named, instructions="Answer in French."
    )
    assert placed == started["id"]
    sent = await door.last_request()
    assert sent["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == ["into it", "again"]
    stored = await door.messages(started["id"])
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[-1]["content"] == second.output_text
    # Two at once: appended in turn, the later one's prompt holding the earlier exchange.
    await asyncio.gather(
        _create(door.alice, input="left", conversation=named),
        _create(door.alice, input="right", conversation=named),
    )
    sent = await door.last_request()
    users = [m["content"] for m in sent["messages"] if m["role"] == "user"]
    assert users[:2] == ["into it", "again"]
    assert sorted(users[2:]) == ["left", "right"]
    assert len(await door.messages(started["id"])) == 8
    with pytest.raises(openai.NotFoundError):
        await door.bob.responses.create(model=MODEL, input="x", conversation=named)


async def test_cut_by_max_output_tokens_is_incomplete(door: Door) -> None:
    cut = await door.alice.responses.create(model=MODEL, input="long", max_output_tokens=3)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None
    assert cut.usage.output_tokens == 3
    events = await door.alice.responses.create(
        model=MODEL, input="long", max_output_tokens=3, stream=True
    )
    last = [event async for event in events][-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    sent = await door.last_request()
    assert sent["max_tokens"] == 3


async def _settled(door: Door, response_id: str) -> Any:
    """The response once its reply is no longer pending (a cut is recorded after the
    client has gone)."""
    deadline = time.monotonic() + scaled(15.0)
    while time.monotonic() < deadline:
        fetched = await door.alice.responses.retrieve(response_id)
        if fetched.status != "in_progress":
            return fetched
        await asyncio.sleep(0.05)
    raise AssertionError(f"{response_id} still in progress")


async def test_failed_and_cancelled_responses(door: Door) -> None:
    # vLLM fails before any output: an HTTP error, the failed reply stored and retrievable.
    with pytest.raises(openai.InternalServerError) as failed:
        await door.alice.responses.create(model="fail-model", input="x")
    reply_id = failed.value.response.headers["x-switchboard-reply-id"]
    stored = await door.alice.responses.retrieve(f"resp_{uuid.UUID(reply_id).hex}")
    assert stored.status == "failed"
    assert stored.error is not None

    # vLLM cuts the stream after three tokens: the stream ends in response.failed.
    events = await door.alice.responses.create(model="cut-model", input="x", stream=True)
    seen = [event async for event in events]
    assert seen[-1].type == "response.failed"
    assert seen[-1].response.error is not None
    assert (await door.alice.responses.retrieve(seen[-1].response.id)).status == "failed"

    # The client leaves mid-stream: vLLM is aborted and the response stored cancelled.
    response_id = ""
    async with door.alice.responses.stream(model="slow-model", input="x") as stream:
        async for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                break
    assert (await _settled(door, response_id)).status == "cancelled"
