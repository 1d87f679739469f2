"""What a limit check costs: CPU per send in memory mode, round trips in Redis mode.

Drives the send path's hooks (``Limiter.admit`` then ``reconcile``, as ``ChatService``
calls them once per exchange) directly, in the same run for: no limits (the key has
none: what every send of an unlimited gateway pays), a key with every limit in memory, and
the same key with its counters in Redis (a ``redis-server`` started here on a free port).
CPU is this process's (``time.process_time``) per admit+reconcile pair; round trips are
Redis's own count of commands (``INFO commandstats``) per pair.

    python -m bench.bench_limits [--sends 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from functions.core.chat.hooks import Admission
from functions.core.chat.targets import Target
from functions.core.keys.schemas import KeyLimits
from functions.core.limits.limiter import Limiter
from functions.core.limits.redis_store import RedisStore
from functions.core.messages.schemas import MessageOut, Usage
from functions.core.settings import Settings
from tests.support.redis import RedisServer

BUDGET_MS = 0.05
EVERY_LIMIT = KeyLimits(
    requests_per_minute=10**8,
    tokens_per_minute=10**12,
    max_concurrent=10**5,
    tokens_per_day=10**14,
    tokens_per_month=10**14,
)


def admission(owner: uuid.UUID) -> Admission:
    return Admission(
        owner=owner,
        conversation_id=uuid.uuid4(),
        target=Target(),
        turns=3,
        chars=600,
        max_tokens=256,
        request_id=None,
        config="bench",
        config_max_concurrent=10**5,
    )


def reply(conversation_id: uuid.UUID) -> MessageOut:
    from datetime import UTC, datetime

    return MessageOut(
        id=uuid.uuid4(),
        conversation_id=conversation_id,
        seq=2,
        role="assistant",
        content="x" * 200,
        status="complete",
        created_at=datetime.now(UTC),
        usage=Usage(prompt_tokens=160, completion_tokens=50, total_tokens=210),
    )


async def pairs(limiter: Limiter, owner: uuid.UUID, limits: KeyLimits, sends: int) -> float:
    """CPU ms per admit+reconcile, the key's limits already known (as after its first send)."""
    limiter._book[owner] = (limits, float("inf"))
    admitted = [admission(owner) for _ in range(sends)]
    replies = [reply(uuid.uuid4()) for _ in range(sends)]
    started = time.process_time()
    for one, answer in zip(admitted, replies, strict=True):
        await limiter.admit(one)
        await limiter.reconcile(one, answer)
    return (time.process_time() - started) * 1000 / sends


async def commands(server: RedisServer) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(server.url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def main(sends: int) -> None:
    settings = Settings()
    owner = uuid.uuid4()
    memory = Limiter(settings)
    unlimited = await pairs(memory, uuid.uuid4(), KeyLimits(), sends)
    limited = await pairs(memory, owner, EVERY_LIMIT, sends)
    with RedisServer() as server:
        shared = Limiter(settings, RedisStore.from_url(server.url, 1.0))
        await pairs(shared, owner, EVERY_LIMIT, 100)  # scripts loaded, connection open
        before = await commands(server)
        wall = time.perf_counter()
        redis_cpu = await pairs(shared, owner, EVERY_LIMIT, sends // 10)
        wall_ms = (time.perf_counter() - wall) * 1000 / (sends // 10)
        trips = (await commands(server) - before) / (sends // 10)
        await shared.close()
    print(f"{'mode':34} {'CPU ms/send':>12} {'vs unlimited':>13} {'round trips/send':>17}")
    print(f"{'no limits (unlimited key)':34} {unlimited:12.4f} {'1.00x':>13} {0:17}")
    print(f"{'every limit, memory':34} {limited:12.4f} {limited / unlimited:12.2f}x {0:17}")
    print(
        f"{'every limit, Redis (admit+settle)':34} {redis_cpu:12.4f} "
        f"{redis_cpu / unlimited:12.2f}x {trips:17.2f}"
    )
    print(f"Redis wall time per admit+settle: {wall_ms:.3f} ms (loopback)")
    added = limited - unlimited
    verdict = "within" if added <= BUDGET_MS else "OVER"
    print(f"memory mode adds {added:.4f} ms CPU per send: {verdict} the {BUDGET_MS} ms budget")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().sends))
