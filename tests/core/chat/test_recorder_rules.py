"""The recorder's one write, ``write_outcome``, on both engines: the rules that decide whether
a reply that is no longer pending counts as written, is a conflict, or is gone.

A retried write whose earlier attempt landed with its answer lost must count as written
(else the outcome would be kept and written forever); a first attempt, or a different
outcome, must not pass for it. Each test fails when its rule is taken out.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.journal import UnwrittenOutcome
from functions.core.chat.recorder import ConversationGoneError, write_outcome
from functions.core.conversations import service as conversations
from functions.core.errors import ConflictError
from functions.core.messages.claim import claim
from functions.core.messages.schemas import ReplyOutcome
from tests.core.messages.test_claim_parity import World, user, world
from tests.core.messages.test_claim_rules import request

CALL = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


async def pending_reply(w: World) -> uuid.UUID:
    claimed = await request(w, [user("hello")])
    await claim(claimed)
    return claimed.reply_id


def entry(w: World, reply_id: uuid.UUID, outcome: ReplyOutcome) -> UnwrittenOutcome:
    return UnwrittenOutcome(
        reply_id=reply_id,
        conversation_id=w.conversation,
        owner_instance=w.lease.instance_id,
        config=None,
        outcome=outcome,
        owner=w.owner,
    )


def complete(content: str = "the answer", **fields: Any) -> ReplyOutcome:
    return ReplyOutcome(status="complete", content=content, model="m", **fields)


async def test_a_retry_that_finds_its_own_outcome_written_counts_as_written(
    db: Engine[Any],
) -> None:
    w = await world()
    reply = await pending_reply(w)
    first = await write_outcome(entry(w, reply, complete(tool_calls=CALL)), retried=False)
    again = await write_outcome(entry(w, reply, complete(tool_calls=CALL)), retried=True)
    assert again.id == first.id == reply
    assert (again.status, again.content, again.tool_calls) == ("complete", "the answer", CALL)


async def test_a_first_attempt_on_a_finished_reply_is_a_conflict(db: Engine[Any]) -> None:
    w = await world()
    reply = await pending_reply(w)
    await write_outcome(entry(w, reply, complete()), retried=False)
    with pytest.raises(ConflictError):
        await write_outcome(entry(w, reply, complete()), retried=False)


@pytest.mark.parametrize(
    "other",
    [
        complete("another answer"),
        complete(tool_calls=CALL),
        ReplyOutcome(status="failed", content="the answer", error_code="upstream_error"),
        ReplyOutcome(status="cancelled", content="the answer", error_code="cancelled"),
    ],
    ids=["content", "tool_calls", "status", "error_code"],
)
async def test_a_retry_that_finds_another_outcome_is_a_conflict(
    db: Engine[Any], other: ReplyOutcome
) -> None:
    w = await world()
    reply = await pending_reply(w)
    await write_outcome(entry(w, reply, complete()), retried=False)
    with pytest.raises(ConflictError):
        await write_outcome(entry(w, reply, other), retried=True)


async def test_the_same_failure_retried_counts_as_written(db: Engine[Any]) -> None:
    w = await world()
    reply = await pending_reply(w)
    failed = ReplyOutcome(status="failed", content="part", error_code="upstream_error")
    await write_outcome(entry(w, reply, failed), retried=False)
    again = await write_outcome(entry(w, reply, failed), retried=True)
    assert again.status == "failed"
    assert again.error is not None
    assert again.error.code == "upstream_error"


async def test_a_reply_whose_conversation_was_deleted_is_gone(db: Engine[Any]) -> None:
    w = await world()
    reply = await pending_reply(w)
    await conversations.delete_conversation(w.owner, w.conversation)
    for retried in (False, True):
        with pytest.raises(ConversationGoneError):
            await write_outcome(entry(w, reply, complete()), retried=retried)
