from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from functions.core.chat import exchanges
from functions.core.chat.exchanges import Exchanges
from functions.core.chat.schemas import SendRequest
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate, LLMConfigOut
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.engine import engine_from_url, using
from functions.core.db.tables import Message, ProcessLease
from functions.core.errors import ConflictError, NotFoundError
from functions.core.keys import service as keys
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.messages import service
from functions.core.messages.claim import ConversationBusyError
from functions.core.messages.schemas import Exchange, ReplyOutcome, Turn


async def begin(owner: uuid.UUID, conv_id: uuid.UUID, text: str) -> Exchange:
    """Claim one user turn, as the chat function does (no wait when busy)."""
    request = SendRequest(
        access=UNRESTRICTED,
        owner=owner,
        conversation_id=conv_id,
        turns=[Turn(role="user", content=text)],
    )
    return await Exchanges(busy_timeout_s=0).begin(request)


async def setup(**config: Any) -> tuple[uuid.UUID, uuid.UUID, LLMConfigOut]:
    owner = (await keys.create_key(ApiKeyCreate(name="o"))).id
    cfg = await configs.create_config(
        msgspec.convert(
            {"name": f"c{uuid.uuid4().hex[:8]}", "model": "m", **config}, LLMConfigCreate
        )
    )
    conv = await conversations.create_conversation(owner, ConversationCreate(config=cfg.name))
    return owner, conv.id, cfg


def done(text: str) -> ReplyOutcome:
    return ReplyOutcome(
        status="complete",
        content=text,
        model="served",
        prompt_tokens=5,
        completion_tokens=2,
        latency_ms=12.5,
        ttft_ms=3.0,
        finish_reason="stop",
        upstream_request_id="chatcmpl-1",
    )


async def test_an_exchange_stores_both_messages_before_the_model_runs(db: object) -> None:
    owner, conv_id, _cfg = await setup(system_prompt="You are terse.")
    exchange = await begin(owner, conv_id, "Hi 👋")
    assert (exchange.user_message.seq, exchange.assistant_message.seq) == (1, 2)
    assert exchange.user_message.status == "complete"
    assert exchange.assistant_message.status == "pending"
    assert exchange.assistant_message.config is not None
    assert exchange.assistant_message.config.version == 1
    assert exchange.prompt == [
        Turn(role="system", content="You are terse."),
        Turn(role="user", content="Hi 👋"),
    ]
    stored = await service.list_messages(owner, conv_id)
    assert [(m.role, m.status) for m in stored.data] == [
        ("user", "complete"),
        ("assistant", "pending"),
    ]


async def test_finishing_records_content_usage_and_timings(db: object) -> None:
    owner, conv_id, _cfg = await setup()
    exchange = await begin(owner, conv_id, "Hi")
    reply = await service.finish_exchange(exchange.assistant_message.id, done("Hello!"))
    assert reply.status == "complete"
    assert reply.content == "Hello!"
    assert reply.usage is not None
    assert reply.usage.total_tokens == 7
    assert (reply.latency_ms, reply.ttft_ms, reply.finish_reason) == (12.5, 3.0, "stop")
    assert reply.model == "served"
    assert reply.completed_at is not None
    with pytest.raises(ConflictError):
        await service.finish_exchange(exchange.assistant_message.id, done("again"))


async def test_history_leaves_out_failed_exchanges(db: object) -> None:
    """A failed reply is left out with the question that asked for it, so one bad
    exchange (a message too long for the context, say) cannot poison later sends."""
    owner, conv_id, _cfg = await setup()
    first = await begin(owner, conv_id, "one")
    await service.finish_exchange(first.assistant_message.id, done("uno"))
    second = await begin(owner, conv_id, "two")
    failed = await service.finish_exchange(
        second.assistant_message.id,
        ReplyOutcome(status="failed", error_code="llm_unavailable", error_message="down"),
    )
    assert failed.error is not None
    assert failed.error.code == "llm_unavailable"
    third = await begin(owner, conv_id, "three")
    assert [t.content for t in third.prompt] == ["one", "uno", "three"]


async def test_history_window_keeps_the_last_n_messages(db: object) -> None:
    owner, conv_id, _cfg = await setup(history_window=3, system_prompt="sys")
    for text in ["a", "b"]:
        exchange = await begin(owner, conv_id, text)
        await service.finish_exchange(exchange.assistant_message.id, done(text.upper()))
    exchange = await begin(owner, conv_id, "c")
    assert [t.content for t in exchange.prompt] == ["sys", "b", "B", "c"]


async def test_a_second_send_waits_for_the_pending_reply(db: object) -> None:
    owner, conv_id, _cfg = await setup()
    await begin(owner, conv_id, "first")
    with pytest.raises(ConversationBusyError):
        await begin(owner, conv_id, "second")


async def test_a_pending_reply_past_its_bound_is_retired(db: object) -> None:
    owner, conv_id, _cfg = await setup()
    stuck = await begin(owner, conv_id, "first")
    long_ago = datetime.now(UTC) - exchanges.DEFAULT_PENDING_BOUND - timedelta(minutes=1)
    await Message.update(
        {
            Message.created_at: long_ago,
            # The reply carries its owner's bound: past it, as the creation time says.
            Message.stale_after: long_ago + exchanges.DEFAULT_PENDING_BOUND,
        }
    ).where(Message.id == stuck.assistant_message.id)
    await begin(owner, conv_id, "second")
    retired = await service.get_message(stuck.assistant_message.id)
    assert (retired.status, retired.error.code if retired.error else None) == (
        "failed",
        "interrupted",
    )


async def test_a_pending_reply_whose_process_died_is_retired_at_once(db: object) -> None:
    """The reply's process let its lease lapse (kill -9): the next send retires it."""
    owner, conv_id, _cfg = await setup()
    dead = Exchanges(busy_timeout_s=0)
    request = SendRequest(
        access=UNRESTRICTED,
        owner=owner,
        conversation_id=conv_id,
        turns=[Turn(role="user", content="first")],
    )
    stuck = await dead.begin(request)
    await ProcessLease.update({ProcessLease.expires_at: datetime.now(UTC)}).where(
        ProcessLease.id == dead.lease.instance_id
    )
    second = await begin(owner, conv_id, "second")
    retired = await service.get_message(stuck.assistant_message.id)
    assert retired.status == "failed"
    assert retired.error is not None
    assert retired.error.code == "interrupted"
    # The retired reply and its question stay out of the prompt.
    assert [t.content for t in second.prompt] == ["second"]


async def test_messages_of_another_key_are_not_found(db: object) -> None:
    _owner, conv_id, _cfg = await setup()
    stranger = (await keys.create_key(ApiKeyCreate(name="s"))).id
    with pytest.raises(NotFoundError):
        await begin(stranger, conv_id, "hi")
    with pytest.raises(NotFoundError):
        await service.list_messages(stranger, conv_id)


async def test_messages_page_in_sequence_order(db: object) -> None:
    owner, conv_id, _cfg = await setup()
    for i in range(3):
        exchange = await begin(owner, conv_id, f"q{i}")
        await service.finish_exchange(exchange.assistant_message.id, done(f"a{i}"))
    first = await service.list_messages(owner, conv_id, limit=4)
    assert [m.seq for m in first.data] == [1, 2, 3, 4]
    assert first.next_cursor is not None
    rest = await service.list_messages(owner, conv_id, cursor=first.next_cursor)
    assert [m.content for m in rest.data] == ["q2", "a2"]
    assert rest.next_cursor is None


async def _send_until_accepted(
    owner: uuid.UUID, conv_id: uuid.UUID, cfg: LLMConfigOut, text: str
) -> tuple[int, int]:
    while True:
        try:
            exchange = await begin(owner, conv_id, text)
        except ConversationBusyError:
            await asyncio.sleep(0.001)
            continue
        await service.finish_exchange(exchange.assistant_message.id, done(f"re:{text}"))
        return exchange.user_message.seq, exchange.assistant_message.seq


async def test_sequence_numbers_stay_ordered_under_concurrent_sends(shared_db: Any) -> None:
    """Separate connections racing on one conversation get gap-free, paired numbers."""
    owner, conv_id, cfg = await setup()
    # A pool on PostgreSQL; on SQLite every query opens its own connection already.
    engine = shared_db
    if shared_db.engine_type == "postgres":
        engine = engine_from_url(shared_db.config["dsn"])
        await engine.start_connection_pool(min_size=4, max_size=8)
    try:
        with using(engine):
            pairs = await asyncio.gather(
                *(_send_until_accepted(owner, conv_id, cfg, f"m{i}") for i in range(8))
            )
    finally:
        if engine is not shared_db:
            await engine.close_connection_pool()
    assert sorted(seq for pair in pairs for seq in pair) == list(range(1, 17))
    assert all(assistant == user + 1 for user, assistant in pairs)
    stored = (await service.list_messages(owner, conv_id, limit=100)).data
    for user, reply in zip(stored[::2], stored[1::2], strict=True):
        assert reply.content == f"re:{user.content}"
    assert (await conversations.get_conversation(owner, conv_id)).message_count == 16
