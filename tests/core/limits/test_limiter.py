"""The limiter's rules without a server: what is reserved, refunded and charged, how the
two stores agree, and the fallback while the shared store is down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from functions.core.chat.hooks import Admission
from functions.core.chat.targets import Target
from functions.core.keys.schemas import KeyLimits
from functions.core.limits.errors import QuotaExceededError, RateLimitedError
from functions.core.limits.limiter import Limiter, estimate_tokens
from functions.core.limits.store import Ask, MemoryStore, Verdict
from functions.core.messages.schemas import MessageOut, Usage
from functions.core.settings import Settings
from tests.support.redis import RedisServer


def limiter_for(limits: KeyLimits, owner: uuid.UUID, store: Any = None) -> Limiter:
    limiter = Limiter(Settings(limit_reserve_max_tokens=1000), store)
    limiter._book[owner] = (limits, float("inf"))  # a warm book: no database
    return limiter


def admitted(owner: uuid.UUID, *, max_tokens: int | None = 500, chars: int = 400) -> Admission:
    return Admission(
        owner=owner,
        conversation_id=uuid.uuid4(),
        target=Target(),
        turns=1,
        chars=chars,
        max_tokens=max_tokens,
        request_id=None,
    )


def reply(content: str = "", usage: Usage | None = None) -> MessageOut:
    return MessageOut(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        seq=2,
        role="assistant",
        content=content,
        status="complete" if usage else "cancelled",
        created_at=datetime.now(UTC),
        usage=usage,
    )


def spent(limiter: Limiter, owner: uuid.UUID) -> int:
    return limiter._memory._spent.get(f"d:{owner}", 0)


async def test_unused_tokens_come_back_and_a_cut_reply_is_charged_what_arrived() -> None:
    owner = uuid.uuid4()
    limiter = limiter_for(KeyLimits(tokens_per_day=10_000), owner)
    prompt = estimate_tokens(400, 1)
    first = admitted(owner)
    await limiter.admit(first)
    assert spent(limiter, owner) == prompt + 500
    await limiter.reconcile(
        first, reply(usage=Usage(prompt_tokens=90, completion_tokens=10, total_tokens=100))
    )
    assert spent(limiter, owner) == 100
    cut = admitted(owner, max_tokens=None)  # the gateway's reservation: 1000
    await limiter.admit(cut)
    assert spent(limiter, owner) == 100 + prompt + 1000
    await limiter.reconcile(cut, reply(content="x" * 40))  # no counts: 40 chars arrived
    assert spent(limiter, owner) == 100 + prompt + 10
    refused = admitted(owner)
    await limiter.admit(refused)
    await limiter.reconcile(refused, None, generated=False)  # the claim refused it
    assert spent(limiter, owner) == 100 + prompt + 10
    lost = admitted(owner)
    await limiter.admit(lost)
    await limiter.reconcile(lost, None)  # generated, nothing recorded: its reservation
    assert spent(limiter, owner) == 100 + 2 * prompt + 10 + 500


async def test_refusals_name_their_limit() -> None:
    owner = uuid.uuid4()
    limiter = limiter_for(KeyLimits(max_concurrent=1, tokens_per_month=2000), owner)
    held = admitted(owner)
    await limiter.admit(held)
    with pytest.raises(RateLimitedError) as busy:
        await limiter.admit(admitted(owner))
    assert busy.value.details["limit"] == "max_concurrent"
    assert busy.value.headers is not None
    assert busy.value.headers["Retry-After"] == "1"
    await limiter.reconcile(held, None, generated=False)
    with pytest.raises(QuotaExceededError) as spent_out:
        await limiter.admit(admitted(owner, max_tokens=5000))
    assert spent_out.value.details["limit"] == "tokens_per_month"
    assert spent_out.value.headers is not None
    assert spent_out.value.headers["x-should-retry"] == "false"


class DownStore:
    """A shared store that never answers."""

    async def acquire(self, ask: Ask) -> Verdict:
        raise ConnectionError("redis is down")

    async def release(self, ask: Ask, refund: int) -> None:
        raise ConnectionError("redis is down")

    async def ping(self) -> None:
        raise ConnectionError("redis is down")

    async def close(self) -> None:
        return None


async def test_a_store_outage_enforces_each_processes_share() -> None:
    owner = uuid.uuid4()
    limiter = limiter_for(KeyLimits(requests_per_minute=10), owner, DownStore())

    async def two() -> int:
        return 2

    limiter.count_live_processes = two
    passed = 0
    for _ in range(10):
        try:
            await limiter.admit(admitted(owner))
            passed += 1
        except RateLimitedError:
            pass
    assert limiter.degraded
    assert passed == 5  # half of 10 a minute: this process's share
    await limiter.close()


async def test_memory_and_redis_answer_alike() -> None:
    from functions.core.limits.redis_store import RedisStore

    memory = MemoryStore()
    with RedisServer() as server:
        redis = RedisStore.from_url(server.url, 2.0)
        try:
            ask = Ask(
                key=str(uuid.uuid4()),
                ticket="t",
                tokens=300,
                requests_per_minute=3,
                tokens_per_minute=1000,
                max_concurrent=2,
                tokens_per_day=800,
                day="20261208",
                month="202612",
            )
            answers: dict[str, list[str]] = {"memory": [], "redis": []}
            for name, store in (("memory", memory), ("redis", redis)):
                for n in range(4):
                    one = Ask(
                        **{**{f: getattr(ask, f) for f in ask.__struct_fields__}, "ticket": f"t{n}"}
                    )
                    verdict = await store.acquire(one)
                    answers[name].append(verdict.refused)
                    if not verdict.refused and n == 0:
                        await store.release(one, 250)  # used 50 of 300
            # The first released its slot; the second and third hold both; the fourth
            # finds them held (concurrency is checked before the rates and budgets).
            assert answers["memory"] == answers["redis"]
            assert answers["memory"] == ["", "", "", "concurrent"]
        finally:
            await redis.close()


async def test_several_choices_reserve_each_reply_and_are_charged_all_of_them() -> None:
    owner = uuid.uuid4()
    limiter = limiter_for(KeyLimits(tokens_per_day=10_000), owner)
    three = msgspec.structs.replace(admitted(owner), choices=3)
    await limiter.admit(three)
    assert spent(limiter, owner) == estimate_tokens(400, 1) + 3 * 500
    first = reply(usage=Usage(prompt_tokens=90, completion_tokens=10, total_tokens=100))
    others = [
        reply(usage=Usage(prompt_tokens=0, completion_tokens=n, total_tokens=n)) for n in (7, 12)
    ]
    await limiter.reconcile(three, first, others=others)
    assert spent(limiter, owner) == 90 + 10 + 7 + 12
