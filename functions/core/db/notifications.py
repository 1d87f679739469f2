"""PostgreSQL notifications: one ``LISTEN`` connection per process, any number of channels.

Several things must reach every serving process at once (a revoked key, an upstream's
health verdict, ...). Each subscribes a channel here; the listener keeps one connection
open, reconnects when it drops, and tells subscribers when it starts and stops hearing,
so a subscriber that caches can stop trusting its cache while messages may be missed.
SQLite has no notifications: callers fall back to a TTL or a periodic read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import current_engine
from functions.core.db.sql import fetch
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

RECONNECT_S = 2.0
log = get_logger(__name__)


async def notify(channel: str, payload: str) -> None:
    """Send ``payload`` to every process listening on ``channel`` (PostgreSQL only).

    Inside a transaction the notification is delivered at commit, and not at all on
    rollback, which is what a change announced together with its write needs.
    """
    if isinstance(current_engine(), PostgresEngine):
        await fetch("SELECT pg_notify({}, {})", channel, payload)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Subscription:
    """What a subscriber wants: its messages, and to know when it can (not) hear them."""

    channel: str
    on_message: Callable[[str], None]
    on_listening: Callable[[], None] = _nothing
    on_lost: Callable[[], None] = _nothing


class NotificationListener:
    """Keeps one ``LISTEN`` connection open for every subscribed channel.

    ``on_listening`` runs once the connection listens (after a reconnect too: anything may
    have been missed meanwhile, so subscribers re-read their state there); ``on_lost`` runs
    when it stops, and when the listener stops.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, subscription: Subscription) -> None:
        if self._task is not None:
            raise RuntimeError("subscribe before the listener starts")
        self._subscriptions.append(subscription)

    def start(self) -> None:
        for subscription in self._subscriptions:
            subscription.on_lost()
        self._task = asyncio.create_task(self._run(), name="switchboard-notifications")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for subscription in self._subscriptions:
            subscription.on_lost()

    def _dispatch(self, subscription: Subscription) -> Callable[[Any, int, str, str], None]:
        def on_notification(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                subscription.on_message(payload)
            except Exception as exc:  # one bad message must not stop the others
                log.error("notifications.handler_failed", channel=_channel, error=repr(exc))

        return on_notification

    async def _run(self) -> None:
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("notifications.listen_failed", error=str(exc))
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for subscription in self._subscriptions:
                    await connection.add_listener(
                        subscription.channel, self._dispatch(subscription)
                    )
                for subscription in self._subscriptions:
                    subscription.on_listening()
                self.listening.set()
                await lost.wait()
                log.warning("notifications.listen_lost")
            finally:
                # Whatever happened, messages may now go unheard: tell every subscriber.
                self.listening.clear()
                for subscription in self._subscriptions:
                    subscription.on_lost()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=1)
            await asyncio.sleep(RECONNECT_S)
