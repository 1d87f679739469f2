"""The usage ledger: one row per finished exchange, written with its outcome, charged to the
conversation's owner, and left in place when the conversation is deleted (a key cannot
erase its usage by deleting its history). Both engines; the journal's replay is in
``test_journal``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.schemas import MessageStarted, ReplyDelta, ReplyFailed
from functions.core.chat.service import ChatService
from functions.core.db.sql import fetch
from functions.core.liveness.service import sweep_interrupted
from functions.core.messages import service as messages
from functions.core.messages.schemas import MessageOut, ReplyOutcome
from functions.core.usage.service import usage_report
from tests.core.chat.conftest import LONG_STREAM, MODEL, MakeClient, Party, new_party, stored_of
from tests.core.llm.conftest import Faults
from tests.support.simulator import SimulatorProcess


async def ledger_of(party: Party) -> dict[str, dict[str, Any]]:
    """The ledger's rows of the party's conversation, by reply id (as text: SQLite's)."""
    rows = await fetch("SELECT * FROM usage_ledger WHERE conversation = {}", party.conversation_id)
    return {str(row["id"]): row for row in rows}


def charged(row: dict[str, Any], reply: MessageOut, party: Party) -> None:
    """``row`` is the ledger's account of ``reply``: who, what, how much, how it went."""
    assert (str(row["owner_key"]), str(row["llm_config"])) == (
        str(party.owner),
        str(party.config.id),
    )
    assert (row["config_name"], row["config_version"], row["model"]) == (
        party.config.name,
        1,
        MODEL,
    )
    assert (row["status"], row["error_code"]) == (
        reply.status,
        reply.error.code if reply.error else None,
    )
    usage = reply.usage
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None)
    )
    assert (row["ttft_ms"], row["latency_ms"]) == (reply.ttft_ms, reply.latency_ms)


async def test_usage_survives_deleting_the_conversation(
    db: object, sim: SimulatorProcess, make_client: MakeClient
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    party = await new_party()
    chat = ChatService(make_client(sim.base_url))
    sent = [await chat.send(party.says(f"question {i}")) for i in range(2)]
    streamed = [event async for event in chat.stream(party.says("a streamed one"))]
    replies = [*sent, streamed[-1].message]  # type: ignore[union-attr]

    ledger = await ledger_of(party)
    assert set(ledger) == {str(reply.id) for reply in replies}
    for reply in replies:
        row = ledger[str(reply.id)]
        charged(row, reply, party)
        assert row["upstream"] == sim.base_url
    before = await usage_report(since=since, owner=party.owner)
    [total] = before.totals
    assert (total.replies, total.complete, total.conversations) == (3, 3, 1)
    assert total.completion_tokens == sum(r.usage.completion_tokens for r in replies if r.usage)

    await chat.delete_conversation(party.owner, party.conversation_id)

    assert (
        await fetch("SELECT id FROM message WHERE conversation = {}", party.conversation_id) == []
    )
    assert await ledger_of(party) == ledger
    assert await usage_report(since=since, until=before.until, owner=party.owner) == before


async def test_failed_and_cancelled_exchanges_are_accounted_as_they_ended(
    db: object, sim: SimulatorProcess, make_client: MakeClient, faults: Faults
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    party = await new_party()
    faults.add({"X-Sim-Fault": "cut:3"}, times=1)
    chat = ChatService(make_client(sim.base_url))
    events = [event async for event in chat.stream(party.says("break halfway"))]
    assert isinstance(events[-1], ReplyFailed)

    faults.add(LONG_STREAM, times=1)
    stream = ChatService(make_client(sim.base_url)).stream(party.says("and leave"))
    assert isinstance(await anext(stream), MessageStarted)
    assert isinstance(await anext(stream), ReplyDelta)
    await stream.aclose()  # the client went away

    _, failed, _, cancelled = await stored_of(party)
    assert (failed.status, cancelled.status) == ("failed", "cancelled")
    # What was generated is kept with the reply.
    assert failed.content
    assert cancelled.content
    ledger = await ledger_of(party)
    charged(ledger[str(failed.id)], failed, party)
    charged(ledger[str(cancelled.id)], cancelled, party)
    # The failure names the upstream that failed; the cancellation ended on the client's side.
    assert ledger[str(failed.id)]["upstream"] == sim.base_url

    await chat.delete_conversation(party.owner, party.conversation_id)
    report = await usage_report(since=since, owner=party.owner)
    [total] = report.totals
    assert (total.replies, total.failed, total.cancelled, total.complete) == (2, 1, 1, 0)
    assert sorted((e.error_code, e.count) for e in report.errors) == [
        ("cancelled", 1),
        ("llm_error", 1),
    ]


async def test_a_retired_reply_is_accounted_until_its_owner_finishes_it(db: object) -> None:
    """A reply a sweep retires as interrupted (its process looked gone) is in the ledger at
    once; if its process was alive after all and writes the outcome, that outcome replaces
    the row: one row per exchange, its last outcome."""
    party = await new_party()
    exchange = await Exchanges(busy_timeout_s=0).begin(party.says("are you there?"))
    reply_id = exchange.assistant_message.id
    later = datetime.now(UTC) + timedelta(days=1)  # past every reply's bound
    [retired] = await sweep_interrupted(bound=timedelta(0), now=later)
    assert retired.message_id == reply_id

    [row] = (await ledger_of(party)).values()
    charged(row, await messages.get_message(reply_id), party)
    assert (row["status"], row["error_code"], row["upstream"]) == ("failed", "interrupted", None)

    late = ReplyOutcome(
        status="complete", content="yes", model=MODEL, prompt_tokens=5, completion_tokens=2,
        latency_ms=30.0, ttft_ms=10.0, finish_reason="stop", upstream="http://vllm:8000/v1",
    )  # fmt: skip
    finished = await messages.finish_exchange(
        reply_id, late, owner_instance=exchange.instance_id, owner=party.owner
    )
    [row] = (await ledger_of(party)).values()
    charged(row, finished, party)
    assert row["upstream"] == "http://vllm:8000/v1"
