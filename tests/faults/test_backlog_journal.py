"""A backlog of unwritten replies survives a stop: the outcome journal, with real processes.

The database stays down longer than ``outcome_retry_s``, so every client is told
``reply_not_recorded`` with its reply's text. The gateway then stops while the database is
still down (SIGTERM, or ``kill -9``), and nothing else is left of those replies but the
journal. Once the database is back, a new gateway on the same journal directory writes
them all: each stored ``complete`` with exactly the text its client received, once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.faults.conftest import (
    ITL_S,
    Faults,
    Stream,
    json_send,
    new_conversation,
    sends_in_flight,
    wait_until,
)

if TYPE_CHECKING:
    import httpx

    from tests.support.gateway import GatewayProcess

PER_KIND = 5  # non-streamed and streamed sends each
REPLY_TOKENS = 20  # 2 s: the outage starts once every reply is generating
RETRY_S = 2.0
# Starting a gateway and replaying takes seconds; a loaded machine may take many more.
REPLAYED_WITHIN_S = 90.0


def _text(stream: Stream) -> str:
    return "".join(data["text"] for name, data in stream.events if name == "delta")


async def _told_not_recorded(
    faults: Faults, client: httpx.AsyncClient, conversations: list[str]
) -> dict[str, str]:
    """Sends whose replies end during an outage longer than the retry: every client is
    told ``reply_not_recorded``, kept on disk. Returns what each client received, by
    assistant message id."""
    sent, seen, streamed = await sends_in_flight(
        faults, client, conversations, max_tokens=REPLY_TOKENS
    )
    await asyncio.sleep(2 * ITL_S)
    await asyncio.to_thread(faults.cluster.stop, "fast")
    responses = await asyncio.gather(*sent)
    await asyncio.gather(*streamed)

    told: dict[str, str] = {}
    errors: list[dict[str, Any]] = []
    for response in responses:
        assert response.status_code == 503, response.text
        errors.append(response.json()["error"])
    for stream in seen:
        assert stream.ended_cleanly, (stream.broken, stream.names[-3:])
        name, data = stream.last
        assert name == "error"
        assert data["error"]["details"]["content"] == _text(stream)
        errors.append(data["error"])
    for error in errors:
        assert error["code"] == "reply_not_recorded", error
        details = error["details"]
        assert details["kept_on_disk"] is True
        assert "kept on disk, so a restart of the gateway does not lose it" in error["message"]
        assert details["status"] == "complete"
        assert details["content"]
        told[details["assistant_message_id"]] = details["content"]
    assert len(told) == 2 * PER_KIND
    return told


def _journals(faults: Faults) -> list[str]:
    assert faults.journal_dir is not None
    if not faults.journal_dir.exists():
        return []
    return sorted(name for name in os.listdir(faults.journal_dir) if name.endswith(".journal"))


def _log_events(text: str, event: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        if event in line and line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


@pytest.mark.parametrize(
    ("stop", "successor"),
    [
        ("sigterm", "after the database is back"),
        ("kill -9", "while the database is down"),
        # Two processes starting at once race for the journal: one replays it.
        ("kill -9", "with two workers"),
    ],
)
async def test_a_backlog_left_at_a_stop_is_written_by_the_next_start(
    faults: Faults, stop: str, successor: str
) -> None:
    gateway = faults.gateway(outcome_retry_s=str(RETRY_S), send_lock_timeout_s="3")
    await faults.configure(gateway)
    async with faults.client(gateway, timeout=120) as client:
        conversations = [await new_conversation(client) for _ in range(2 * PER_KIND)]
        told = await _told_not_recorded(faults, client, conversations)

    assert len(_journals(faults)) == 1
    stopping = time.monotonic()
    if stop == "sigterm":
        gateway.stop(timeout=120)
        # A graceful stop says what it leaves for the next start.
        [left] = _log_events(gateway.log_text(), "chat.reply_backlog_left")
        assert left["count"] == 2 * PER_KIND
        assert _log_events(gateway.log_text(), "chat.reply_backlog_lost") == []
    else:
        gateway.kill()
    stopped_s = time.monotonic() - stopping
    assert len(_journals(faults)) == 1

    ids = list(told)
    if successor == "while the database is down":
        # It starts, finds the journal, and waits for the database to write it.
        started = faults.gateway()
        await asyncio.sleep(3 * RETRY_S)
        await asyncio.to_thread(faults.cluster.start)
    else:
        await asyncio.to_thread(faults.cluster.start)
        # Nothing wrote the replies yet: the old process is gone, its lease with it.
        rows = await faults.query(
            "SELECT id, status FROM message WHERE id::text = ANY($1::text[])", ids
        )
        assert {row["status"] for row in rows} == {"pending"}
        started = faults.gateway(workers=2 if successor == "with two workers" else 1)

    written_s = await _written_as_told(faults, started, conversations, told)
    print(
        f"\n{stop} ({stopped_s:.1f} s to stop), next gateway {successor}: {len(ids)} "
        f"journaled replies written {written_s:.2f} s after it was ready and the database up"
    )
    replays = _log_events(started.log_text(), "chat.reply_journal_replayed")
    assert [event["count"] for event in replays] == [2 * PER_KIND]


async def test_a_backlog_its_process_writes_itself_leaves_no_journal(faults: Faults) -> None:
    """No stop: the database comes back, the gateway writes its own backlog, and its
    journal is deleted (nothing is left for anyone to replay)."""
    gateway = faults.gateway(outcome_retry_s=str(RETRY_S), send_lock_timeout_s="3")
    await faults.configure(gateway)
    async with faults.client(gateway, timeout=120) as client:
        conversations = [await new_conversation(client) for _ in range(2 * PER_KIND)]
        told = await _told_not_recorded(faults, client, conversations)
    assert len(_journals(faults)) == 1
    await asyncio.to_thread(faults.cluster.start)
    written_s = await _written_as_told(faults, gateway, conversations, told)
    print(f"\nno stop: the backlog written {written_s:.2f} s after the database was up")
    assert _log_events(gateway.log_text(), "chat.reply_journal_replayed") == []
    assert len(_log_events(gateway.log_text(), "chat.reply_backlog_written")) == 2 * PER_KIND


async def _written_as_told(
    faults: Faults, gateway: GatewayProcess, conversations: list[str], told: dict[str, str]
) -> float:
    """Wait until every told reply is stored; then check each is stored once, complete,
    with the text its client received, and the journal is gone. Returns the wait."""
    ids = list(told)

    async def written() -> bool:
        rows = await faults.query(
            "SELECT status FROM message WHERE id::text = ANY($1::text[])", ids
        )
        return all(row["status"] == "complete" for row in rows)

    waited_s = await wait_until(written, within=REPLAYED_WITHIN_S, interval=0.2)
    for i, conversation in enumerate(conversations):
        sent = [f"json {i}"] if i < PER_KIND else [f"sse {i - PER_KIND}"]
        rows = await faults.assert_paired(conversation, sent)
        reply = rows[1]
        assert (reply["status"], reply["error_code"]) == ("complete", None)
        assert reply["content"] == told[str(reply["id"])]
    assert await faults.pending() == []
    interrupted = await faults.query("SELECT id FROM message WHERE error_code = 'interrupted'")
    assert interrupted == []
    # The journal is done with: removed, and replayed by nobody again.
    await wait_until(lambda: _no_journal(faults), within=REPLAYED_WITHIN_S)
    assert _log_events(gateway.log_text(), "chat.reply_backlog_dropped") == []

    # Every conversation takes its next send at once.
    async with faults.client(gateway) as client:
        again = await asyncio.gather(
            *(json_send(client, conv, "after", max_tokens=2) for conv in conversations)
        )
    assert [response.status_code for response in again] == [201] * len(conversations)
    return waited_s


async def _no_journal(faults: Faults) -> bool:
    return _journals(faults) == []
