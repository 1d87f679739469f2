"""SIGTERM (a deploy): sends drain within the grace; the rest end as ``shutdown``, cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from tests.faults.conftest import (
    Faults,
    json_send,
    new_conversation,
    sends_in_flight,
    wait_until,
)

PER_KIND = 3


async def test_sigterm_ends_replies_longer_than_the_grace_as_shutdown(faults: Faults) -> None:
    grace_s = 1.5
    gateway = faults.gateway(shutdown_grace_s=str(grace_s))
    await faults.configure(gateway)
    async with faults.client(gateway) as client:
        conversations = [await new_conversation(client) for _ in range(2 * PER_KIND)]
        sent, seen, streamed = await sends_in_flight(faults, client, conversations, max_tokens=150)
        assert gateway.pid is not None
        os.kill(gateway.pid, signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        try:  # draining: a new send is refused, never half-served
            late = await json_send(client, conversations[0], "too late", max_tokens=2)
        except httpx.TransportError:
            late = None
        responses = await asyncio.gather(*sent)
        await asyncio.gather(*streamed)
        answered_s = time.monotonic() - signalled

    async def exited() -> bool:
        return not gateway.running

    await wait_until(exited, within=10)
    exited_s = time.monotonic() - signalled
    print(
        f"\nSIGTERM, replies longer than the {grace_s} s grace: clients answered "
        f"{answered_s:.2f} s after it, process gone after {exited_s:.2f} s"
    )
    if late is not None:
        assert late.status_code == 503, late.text
        assert late.json()["error"]["code"] == "shutting_down"
    assert grace_s <= answered_s < grace_s + 2
    for i, response in enumerate(responses):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["retry-after"]
        error = response.json()["error"]
        assert error["code"] == "shutting_down"
        rows = await faults.assert_paired(conversations[i], [f"json {i}"])
        assert error["details"]["assistant_message_id"] == str(rows[1]["id"])
        assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "shutdown")
    for i, stream in enumerate(seen):
        assert stream.ended_cleanly, (stream.broken, stream.names[-3:])
        name, data = stream.last
        assert (name, data["error"]["code"]) == ("error", "shutting_down")
        rows = await faults.assert_paired(conversations[PER_KIND + i], [f"sse {i}"])
        assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "shutdown")
        assert data["message"]["status"] == "failed"
        # What streamed before the grace ran out is kept with the reply.
        text = "".join(d["text"] for n, d in stream.events if n == "delta")
        assert text
        assert rows[1]["content"] == text
    assert await faults.pending() == []
    leases = await faults.query("SELECT id FROM process_lease")
    assert leases == []  # a clean exit releases its lease


async def test_sigterm_lets_replies_shorter_than_the_grace_finish(faults: Faults) -> None:
    grace_s = 6.0
    gateway = faults.gateway(shutdown_grace_s=str(grace_s))
    await faults.configure(gateway)
    async with faults.client(gateway) as client:
        conversations = [await new_conversation(client) for _ in range(2 * PER_KIND)]
        sent, seen, streamed = await sends_in_flight(faults, client, conversations, max_tokens=20)
        assert gateway.pid is not None
        os.kill(gateway.pid, signal.SIGTERM)
        signalled = time.monotonic()
        responses = await asyncio.gather(*sent)
        await asyncio.gather(*streamed)
        answered_s = time.monotonic() - signalled

    async def exited() -> bool:
        return not gateway.running

    await wait_until(exited, within=grace_s + 5)
    exited_s = time.monotonic() - signalled
    print(
        f"\nSIGTERM, replies shorter than the {grace_s} s grace: all complete "
        f"{answered_s:.2f} s after it, process gone after {exited_s:.2f} s"
    )
    assert exited_s < grace_s  # it did not sit out the grace once the sends were done
    for i, response in enumerate(responses):
        assert response.status_code == 201, response.text
        body = response.json()
        rows = await faults.assert_paired(conversations[i], [f"json {i}"])
        assert (rows[1]["status"], rows[1]["content"]) == ("complete", body["content"])
    for i, stream in enumerate(seen):
        assert stream.ended_cleanly, (stream.broken, stream.names[-3:])
        name, data = stream.last
        assert name == "done"
        rows = await faults.assert_paired(conversations[PER_KIND + i], [f"sse {i}"])
        assert (rows[1]["status"], rows[1]["content"]) == ("complete", data["message"]["content"])
    assert await faults.pending() == []
