"""``Idempotency-Key``: a retry never stores a message twice, across processes and crashes."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.faults.conftest import Faults, json_send, new_conversation, wait_until

RACES = 6


async def test_the_same_key_twice_is_one_exchange_and_another_body_is_refused(
    faults: Faults,
) -> None:
    gateway = faults.gateway()
    await faults.configure(gateway)
    async with faults.client(gateway) as client:
        conversation = await new_conversation(client)
        key = str(uuid.uuid4())
        first = await json_send(client, conversation, "once", idempotency_key=key, max_tokens=5)
        second = await json_send(client, conversation, "once", idempotency_key=key, max_tokens=5)
        other = await json_send(client, conversation, "twice", idempotency_key=key, max_tokens=5)
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["content"] == first.json()["content"]
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    rows = await faults.assert_paired(conversation, ["once"])
    assert str(rows[1]["id"]) == first.json()["id"]


async def test_the_same_key_sent_at_once_to_two_processes_is_one_exchange(
    faults: Faults,
) -> None:
    gateways = [faults.gateway(), faults.gateway()]
    await faults.configure(gateways[0])
    clients = [faults.client(gateway) for gateway in gateways]
    try:
        conversations = [await new_conversation(clients[0]) for _ in range(RACES)]
        keys = [str(uuid.uuid4()) for _ in range(RACES)]
        answers = await asyncio.gather(
            *(
                json_send(client, conv, f"race {i}", idempotency_key=key, max_tokens=10)
                for i, (conv, key) in enumerate(zip(conversations, keys, strict=True))
                for client in clients
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    for i, conversation in enumerate(conversations):
        pair = answers[2 * i : 2 * i + 2]
        assert [answer.status_code for answer in pair] == [201, 201], [a.text for a in pair]
        first, second = (answer.json() for answer in pair)
        assert (first["id"], first["content"]) == (second["id"], second["content"])
        assert first["status"] == "complete"
        rows = await faults.assert_paired(conversation, [f"race {i}"])
        assert str(rows[1]["id"]) == first["id"]
    stored = await faults.query("SELECT count(*) AS n FROM idempotency_key")
    assert stored[0]["n"] == RACES


async def test_a_retry_after_kill_9_stores_nothing_and_says_what_happened(
    faults: Faults,
) -> None:
    doomed = faults.gateway()
    await faults.configure(doomed)
    key = str(uuid.uuid4())
    async with faults.client(doomed) as client:
        conversation = await new_conversation(client)
        first = asyncio.create_task(
            json_send(client, conversation, "are you there?", idempotency_key=key, max_tokens=100)
        )

        async def generating() -> bool:
            return len(await faults.pending()) == 1

        await wait_until(generating, within=5)
        doomed.kill()
        try:
            await first
        except httpx.TransportError:
            pass
        else:
            raise AssertionError("a killed process answered")
    [reply] = await faults.query("SELECT id FROM message WHERE role = 'assistant'")

    restarted = faults.gateway()
    async with faults.client(restarted) as client:
        retry = await json_send(
            client, conversation, "are you there?", idempotency_key=key, max_tokens=100
        )
        fresh = await json_send(
            client, conversation, "are you there?", idempotency_key=str(uuid.uuid4()), max_tokens=3
        )
    error = retry.json()["error"]
    print(f"\nretry after kill -9: {retry.status_code} {error['code']}: {error['message']}")
    assert retry.status_code == 409
    assert error["code"] == "idempotent_request_failed"
    assert error["details"]["first_error"]["code"] == "interrupted"
    assert error["details"]["replayed"] is True
    assert error["details"]["assistant_message_id"] == str(reply["id"])
    assert fresh.status_code == 201, fresh.text
    rows = await faults.assert_paired(conversation, ["are you there?", "are you there?"])
    assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "interrupted")
    # The first exchange's fate is final: the answer must not invite the same retry again
    # (a client obeying Retry-After would replay this failure forever) and must say how
    # to go on, as the `cancelled` replay does ("send again with a new key").
    assert "retry-after" not in retry.headers, (retry.status_code, dict(retry.headers))
    assert "new key" in error["message"]
