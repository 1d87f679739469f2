"""``kill -9`` with streams in flight: no conversation stays stuck, nothing is lost or doubled.

The dead process's pending replies are retired as ``interrupted``: at once by a process
restarted on the same host (it ends its dead neighbours' leases at start), by the claim of
the next send once the lease lapses, and by any live process's sweep.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.faults.conftest import (
    LEASE_TTL_S,
    Faults,
    Stream,
    new_conversation,
    stream_send,
    wait_until,
)

IN_FLIGHT = 8
ABANDONED = 2
LONG_REPLY = 300  # tokens: 30 s at the simulator's pace, outlives the process
SHORT_REPLY = 5


async def _streams_in_flight(
    faults: Faults, client: httpx.AsyncClient, conversations: list[str]
) -> tuple[list[Stream], list[asyncio.Task[Stream]]]:
    seen = [Stream() for _ in conversations]
    tasks = [
        asyncio.create_task(
            stream_send(client, conv, f"first {i}", seen=seen[i], max_tokens=LONG_REPLY)
        )
        for i, conv in enumerate(conversations)
    ]
    await asyncio.wait_for(asyncio.gather(*(s.first_delta.wait() for s in seen)), 10)
    owners = await faults.query(
        "SELECT DISTINCT owner_instance FROM message WHERE status = 'pending'"
    )
    assert len(owners) == 1
    assert owners[0]["owner_instance"] is not None
    assert len(await faults.pending()) == len(conversations)
    return seen, tasks


async def test_kill_9_mid_stream_then_restart_every_conversation_accepts_at_once(
    faults: Faults,
) -> None:
    old = faults.gateway()
    await faults.configure(old)
    async with faults.client(old) as client:
        conversations = [await new_conversation(client) for _ in range(IN_FLIGHT + ABANDONED)]
        cut, tasks = await _streams_in_flight(faults, client, conversations)
        old.kill()
        killed_at = time.monotonic()
        await asyncio.gather(*tasks)
    for stream in cut:  # a killed process cannot say goodbye: the stream is cut
        assert stream.status == 200
        assert stream.names[0] == "message"
        assert "done" not in stream.names
        assert stream.broken is not None

    new = faults.gateway()
    ready_after_s = time.monotonic() - killed_at
    async with faults.client(new) as client:
        again = await asyncio.gather(
            *(
                stream_send(client, conv, f"second {i}", max_tokens=SHORT_REPLY)
                for i, conv in enumerate(conversations[:IN_FLIGHT])
            )
        )
    accepted = [stream.accepted_after_s or 0.0 for stream in again]
    print(
        f"\ncrash: new gateway ready {ready_after_s:.2f} s after kill -9; sends accepted "
        f"in max {max(accepted):.3f} s"
    )
    assert [stream.status for stream in again] == [200] * IN_FLIGHT
    # No wait for the old lease to lapse: the restarted process ended it at start.
    assert max(accepted) < LEASE_TTL_S / 2
    assert all(stream.ended_cleanly and stream.last[0] == "done" for stream in again)

    assert await faults.pending() == []
    for i, conv in enumerate(conversations[:IN_FLIGHT]):
        rows = await faults.assert_paired(conv, [f"first {i}", f"second {i}"])
        assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "interrupted")
        assert rows[1]["content"] == ""  # the text streamed before the kill was never stored
        assert rows[3]["status"] == "complete"
        assert rows[3]["content"]
    for i, conv in enumerate(conversations[IN_FLIGHT:], start=IN_FLIGHT):
        rows = await faults.assert_paired(conv, [f"first {i}"])
        assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "interrupted")


async def test_kill_9_a_peer_retires_the_dead_replies_and_accepts_sends_within_the_lease(
    faults: Faults,
) -> None:
    """Two processes on one database; one dies and is not restarted."""
    doomed = faults.gateway()
    peer = faults.gateway()
    await faults.configure(peer)
    async with faults.client(doomed) as client:
        conversations = [await new_conversation(client) for _ in range(4)]
        _, tasks = await _streams_in_flight(faults, client, conversations)
        doomed.kill()
        killed_at = time.monotonic()
        await asyncio.gather(*tasks)

    async with faults.client(peer) as client:
        # A send at once: it waits (busy) only until the dead owner's lease lapses.
        sent_s = time.monotonic() - killed_at
        retry = await stream_send(client, conversations[0], "second 0", max_tokens=SHORT_REPLY)
        accepted_s = sent_s + (retry.accepted_after_s or 0)
        assert retry.status == 200, retry.body
        assert retry.ended_cleanly
        assert retry.last[0] == "done"

        async def nothing_pending() -> bool:
            return await faults.pending() == []

        await wait_until(nothing_pending, within=3 * LEASE_TTL_S)
        swept_s = time.monotonic() - killed_at
    print(
        f"\npeer: send accepted {accepted_s:.2f} s after kill -9; "
        f"every dead reply retired {swept_s:.2f} s after it"
    )
    # The lease lapses within its TTL of the last heartbeat; the claim retries every 50 ms.
    assert accepted_s < LEASE_TTL_S + 0.5
    # A lapse, then the peer's sweep (every TTL).
    assert swept_s < 2 * LEASE_TTL_S + 1
    await faults.assert_paired(conversations[0], ["first 0", "second 0"])
    for i, conv in enumerate(conversations[1:], start=1):
        rows = await faults.assert_paired(conv, [f"first {i}"])
        assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "interrupted")
