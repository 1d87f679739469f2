"""A database restart or stop while replies are generating: no answer is thrown away.

The model keeps answering while PostgreSQL is away; the outcome write is retried for
``outcome_retry_s``, so a reply that finished during the outage is stored ``complete`` once
the database is back. An outage longer than that is told to the client, with the ids and the
reply's text, as a JSON error or an SSE ``error`` event: never a cut stream, never a 500.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from functions.core.db.engine import engine_from_url, using
from functions.core.liveness.service import Retired, pending_bound, sweep_interrupted
from functions.core.settings import load_settings
from tests.faults.conftest import (
    DATABASE,
    ITL_S,
    LEASE_TTL_S,
    Faults,
    Stream,
    json_send,
    new_conversation,
    sends_in_flight,
)

PER_KIND = 4
REPLY_TOKENS = 30  # 3 s: the outage starts about a second in and the reply ends inside it
STOP_S = 4.0


def _text(stream: Stream) -> str:
    return "".join(data["text"] for name, data in stream.events if name == "delta")


async def _in_flight(
    faults: Faults, client: httpx.AsyncClient, conversations: list[str]
) -> tuple[list[asyncio.Task[httpx.Response]], list[Stream], list[asyncio.Task[Stream]]]:
    """``PER_KIND`` non-streamed and ``PER_KIND`` streamed sends, all generating."""
    sent, seen, streamed = await sends_in_flight(
        faults, client, conversations, max_tokens=REPLY_TOKENS
    )
    await asyncio.sleep(10 * ITL_S)
    return sent, seen, streamed


async def _probe(client: httpx.AsyncClient, conversation: str, statuses: list[int]) -> None:
    """A send made while the database is away: a JSON 503, never a 500."""
    try:
        response = await json_send(client, conversation, "during the outage", max_tokens=2)
    except httpx.TransportError:
        return
    statuses.append(response.status_code)
    assert response.headers["content-type"].startswith("application/json"), response.text


async def _maintenance_sweep(faults: Faults) -> list[Retired]:
    with using(engine_from_url(faults.cluster.socket_url(DATABASE))):
        return await sweep_interrupted(bound=pending_bound(load_settings({}, dotenv=None)))


@pytest.mark.parametrize("outage", ["restart", "stop"])
async def test_replies_in_flight_are_stored_complete_after_a_blip(
    faults: Faults, outage: str
) -> None:
    gateway = faults.gateway()
    await faults.configure(gateway)
    statuses: list[int] = []
    async with faults.client(gateway) as client:
        conversations = [await new_conversation(client) for _ in range(2 * PER_KIND)]
        probe_conversation = await new_conversation(client)
        sent, seen, streamed = await _in_flight(faults, client, conversations)
        started = time.monotonic()
        retired: list[Retired] = []
        if outage == "restart":
            await asyncio.to_thread(faults.cluster.restart, "fast")
        else:
            await asyncio.to_thread(faults.cluster.stop, "fast")
            await _probe(client, probe_conversation, statuses)
            await asyncio.sleep(STOP_S - (time.monotonic() - started))
            # Back first for the maintenance flow alone (the Unix socket): its sweep, the
            # same service every process runs, finds the replies whose process could not
            # renew its lease during the outage. That process is alive and still recording
            # them; the sweep cannot tell, so the owner's write must win.
            await asyncio.to_thread(faults.cluster.start, tcp=False)
            retired = await _maintenance_sweep(faults)
            await asyncio.to_thread(faults.cluster.restart, "fast")
        back_s = time.monotonic() - started
        responses = await asyncio.gather(*sent)
        await asyncio.gather(*streamed)
        statuses += [response.status_code for response in responses]
        statuses += [stream.status for stream in seen]
        await _probe(client, probe_conversation, statuses)
        print(
            f"\n{outage}: database away {back_s:.2f} s; the sweep then retired "
            f"{len(retired)} live replies; statuses {sorted(statuses)}"
        )

        assert 500 not in statuses
        assert [response.status_code for response in responses] == [201] * PER_KIND
        for stream in seen:
            assert stream.ended_cleanly, (stream.broken, stream.names[-3:])
        # What each client got is what is stored, and both are the whole answer:
        # (door, what the client was told, stored status, stored error, same text).
        told: list[tuple[str, str, str | None, bool]] = []
        for i, body in enumerate(response.json() for response in responses):
            rows = await faults.assert_paired(conversations[i], [f"json {i}"])
            told.append(
                (
                    "json",
                    body["status"],
                    rows[1]["error_code"],
                    bool(body["content"]) and rows[1]["content"] == body["content"],
                )
            )
        for i, stream in enumerate(seen):
            rows = await faults.assert_paired(conversations[PER_KIND + i], [f"sse {i}"])
            name, data = stream.last
            told.append(
                (
                    f"sse {name}",
                    data["message"]["status"],
                    rows[1]["error_code"],
                    bool(_text(stream)) and rows[1]["content"] == _text(stream),
                )
            )
        assert (
            told
            == [("json", "complete", None, True)] * PER_KIND
            + [("sse done", "complete", None, True)] * PER_KIND
        )
        assert await faults.pending() == []

        # Every conversation takes its next send at once.
        again = await asyncio.gather(
            *(json_send(client, conv, "after", max_tokens=2) for conv in conversations)
        )
        assert [response.status_code for response in again] == [201] * len(conversations)


async def test_an_outage_longer_than_the_retry_tells_the_client_ids_and_text(
    faults: Faults,
) -> None:
    retry_s = 2.0
    gateway = faults.gateway(outcome_retry_s=str(retry_s), send_lock_timeout_s="3")
    await faults.configure(gateway)
    async with faults.client(gateway) as client:
        conversations = [await new_conversation(client) for _ in range(2 * PER_KIND)]
        sent, seen, streamed = await _in_flight(faults, client, conversations)
        await asyncio.to_thread(faults.cluster.stop, "fast")
        stopped_at = time.monotonic()
        # Every reply ends (2 s) and gives up on the database (2 s more) before it is back.
        responses = await asyncio.gather(*sent)
        await asyncio.gather(*streamed)
        waited_s = time.monotonic() - stopped_at
        await asyncio.to_thread(faults.cluster.start)
        back_at = time.monotonic()
        print(f"\nlong outage: every client answered {waited_s:.2f} s into it")

        for i, response in enumerate(responses):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/json")
            error = response.json()["error"]
            assert error["code"] == "reply_not_recorded"
            details = error["details"]
            assert details["conversation_id"] == conversations[i]
            assert details["status"] == "complete"
            assert len(details["content"]) > 0
            rows = await faults.messages(conversations[i])
            assert [str(row["id"]) for row in rows] == [
                details["user_message_id"],
                details["assistant_message_id"],
            ]
        for i, stream in enumerate(seen):
            assert stream.ended_cleanly, (stream.broken, stream.names[-3:])
            name, data = stream.last
            assert (name, data["error"]["code"]) == ("error", "reply_not_recorded")
            details = data["error"]["details"]
            assert details["content"] == _text(stream)
            assert details["content"]
            assert details["assistant_message_id"] == stream.events[0][1]["assistant_message"]["id"]
            assert details["conversation_id"] == conversations[PER_KIND + i]

        # Once the database is back, a conversation must not stay blocked by a reply the
        # gateway gave up on: each accepts a send within seconds (the lease TTL).
        async def accepted(conv: str) -> tuple[int, float, str]:
            response = await json_send(client, conv, "after", max_tokens=2)
            code = response.json().get("error", {}).get("code", "") if response.is_error else ""
            return response.status_code, round(time.monotonic() - back_at, 2), code

        again = await asyncio.gather(*(accepted(conv) for conv in conversations))
        left = await faults.pending()
        print(f"long outage: sends after it {again}; {len(left)} replies still pending")
        assert [status for status, _, _ in again] == [201] * len(conversations), again
        assert max(after for _, after, _ in again) < LEASE_TTL_S + 1
