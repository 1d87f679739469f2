"""Revocations reach every process at once: PostgreSQL ``NOTIFY`` on revoke, ``LISTEN`` in
each serving process, which drops the key from its :mod:`~functions.core.keys.cache`.

While a process is not listening (starting, or its listening connection dropped) it
cannot hear revocations, so it stops caching until it listens again: a missed message
can never keep a revoked key alive. SQLite has no notifications; there the cache TTL
bounds how long another process may still accept a revoked key.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import current_engine
from functions.core.db.sql import fetch
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from functions.core.keys.cache import PrincipalCache

CHANNEL = "switchboard_key_revoked"
RECONNECT_S = 2.0

log = get_logger(__name__)


async def announce(key_id: uuid.UUID) -> None:
    """Tell every listening process that ``key_id`` was revoked (PostgreSQL only)."""
    if isinstance(current_engine(), PostgresEngine):
        await fetch("SELECT pg_notify({}, {})", CHANNEL, str(key_id))


class RevocationListener:
    """Keeps one ``LISTEN`` connection open and enables the cache only while it is."""

    def __init__(self, dsn: str, cache: PrincipalCache, ttl_s: float) -> None:
        self._dsn = dsn
        self._cache = cache
        self._ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._cache.disable()
        self._task = asyncio.create_task(self._run(), name="switchboard-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._cache.disable()

    def _on_revoked(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._cache.forget(uuid.UUID(payload))

    async def _run(self) -> None:
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("auth_cache.listen_failed", error=str(exc))
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._on_revoked)
                self._cache.enable(self._ttl_s)
                self.listening.set()
                await lost.wait()
                log.warning("auth_cache.listen_lost")
            finally:
                # Whatever happened, revocations may now go unheard: stop trusting the cache.
                self.listening.clear()
                self._cache.disable()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=1)
            await asyncio.sleep(RECONNECT_S)
