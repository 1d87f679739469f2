"""NOTIFY/LISTEN: a revocation in one process empties every other process's cache entry,
and a process that cannot hear revocations does not cache at all."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from piccolo.engine.base import Engine

from functions.core.db.engine import use_engine
from functions.core.db.notifications import PostgresListener
from functions.core.keys import service
from functions.core.keys.cache import PrincipalCache
from functions.core.keys.revocations import revocations_for
from functions.core.keys.schemas import ApiKeyCreate
from tests.conftest import truncate_all


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true in time")


async def test_revocations_reach_a_listening_cache_and_losing_the_line_disables_it(
    pg_url: str, pg_engine: Engine[Any]
) -> None:
    use_engine(pg_engine)
    created = await service.create_key(ApiKeyCreate(name="watched"))
    principal = await service.authenticate(created.secret)
    key_hash = service.hash_secret(created.secret)

    cache = PrincipalCache()  # stands for another process's cache
    listener = PostgresListener(pg_url)
    listener.subscribe(revocations_for(cache, ttl_s=300))
    listener.start()
    try:
        await asyncio.wait_for(listener.listening.wait(), 5)
        cache.put(key_hash, principal)
        assert cache.get(key_hash) == principal

        await service.revoke_key(created.id)
        await wait_until(lambda: cache.get(key_hash) is None)

        # Cut the listening connection: the cache turns itself off until it listens again.
        cache.put(key_hash, principal)
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
            )
        finally:
            await admin.close()
        await wait_until(lambda: not listener.listening.is_set())
        assert cache.get(key_hash) is None
        cache.put(key_hash, principal)
        assert cache.get(key_hash) is None  # not caching while deaf
        await asyncio.wait_for(listener.listening.wait(), 10)
        cache.put(key_hash, principal)
        assert cache.get(key_hash) == principal
    finally:
        await listener.stop()
        await truncate_all(pg_engine)
