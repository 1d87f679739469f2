"""Notifications: a message to every process serving one database, on either engine.

Several things must reach every serving process at once (a revoked key, an upstream's
health verdict, a deleted conversation, ...). Each subscribes a channel on its process's
listener, which tells subscribers when it starts and stops hearing, so a subscriber that
caches can stop trusting its cache while messages may be missed.

The two engines' implementations sit side by side here, behind one interface (a
:class:`Listener` and :func:`notify`); which one a process uses is the engine port's
choice (:mod:`functions.core.db.port`):

- PostgreSQL: ``NOTIFY``, heard by :class:`PostgresListener` on one ``LISTEN`` connection
  per process, reconnected when it drops.
- PostgreSQL behind a pooler in transaction mode: ``LISTEN`` on a direct connection
  (``SWITCHBOARD_DATABASE_LISTEN_URL``), else :class:`DeafListener`, which hears nothing.
- SQLite: no notifications, so :func:`log_notification` writes a row of
  ``notification_log`` and :class:`PollingListener` reads the rows after the last one it
  saw, every ``poll_s``, on a connection of its own.

Either way a notification sent inside a transaction is delivered at commit and not at all
on rollback, which is what a change announced together with its write needs; a listener
hears what is sent while it listens, in order, each message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiosqlite
import asyncpg

from functions.core.db.sql import fetch
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from piccolo.engine.sqlite import SQLiteEngine

RECONNECT_S = 2.0
# How often a SQLite process looks for new notifications: the delay a message may take.
POLL_S = 0.5
# How long SQLite keeps a notification: far longer than any poll, so no listener that is
# listening misses one; one that stopped listening re-reads its state when it hears again.
KEEP_S = 3600.0
log = get_logger(__name__)


async def notify(channel: str, payload: str) -> None:
    """Send ``payload`` to every process listening on ``channel``, on the current engine.

    Inside a transaction the notification is delivered at commit, and not at all on
    rollback.
    """
    # Imported here: the port imports this module's implementations.
    from functions.core.db.port import current_port

    await current_port().notify(channel, payload)


async def pg_notify(channel: str, payload: str) -> None:
    """PostgreSQL: ``NOTIFY``, queued by the server until the transaction commits."""
    await fetch("SELECT pg_notify({}, {})", channel, payload)


async def log_notification(channel: str, payload: str) -> None:
    """SQLite: a row of ``notification_log``, written in the caller's transaction (so
    committed, and seen by pollers, with it); rows older than :data:`KEEP_S` go."""
    now = time.time()
    await fetch(
        "INSERT INTO notification_log (channel, payload, created_at) VALUES ({}, {}, {})",
        channel,
        payload,
        now,
    )
    await fetch("DELETE FROM notification_log WHERE created_at < {}", now - KEEP_S)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Subscription:
    """What a subscriber wants: its messages, and to know when it can (not) hear them."""

    channel: str
    on_message: Callable[[str], None]
    on_listening: Callable[[], None] = _nothing
    on_lost: Callable[[], None] = _nothing


class Listener(Protocol):
    """One process's listener: subscribe every channel, then :meth:`start`; :meth:`stop`
    when the process stops. ``listening`` is set while it hears.

    ``on_listening`` runs once it hears (after a reconnect too: anything may have been
    missed meanwhile, so subscribers re-read their state there); ``on_lost`` runs when
    :meth:`start` begins, whenever it stops hearing, and when it stops.
    """

    listening: asyncio.Event

    def subscribe(self, subscription: Subscription) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Subscribers:
    """What both listeners share: their subscriptions, their task, telling subscribers."""

    def __init__(self) -> None:
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

    async def _run(self) -> None:
        raise NotImplementedError

    def _heard(self) -> None:
        for subscription in self._subscriptions:
            subscription.on_listening()
        self.listening.set()

    def _lost(self) -> None:
        self.listening.clear()
        for subscription in self._subscriptions:
            subscription.on_lost()

    def _deliver(self, channel: str, payload: str) -> None:
        for subscription in self._subscriptions:
            if subscription.channel == channel:
                _call(subscription, payload)


def _call(subscription: Subscription, payload: str) -> None:
    try:
        subscription.on_message(payload)
    except Exception as exc:  # one bad message must not stop the others
        log.error("notifications.handler_failed", channel=subscription.channel, error=repr(exc))


class PostgresListener(_Subscribers):
    """PostgreSQL: keeps one ``LISTEN`` connection open for every subscribed channel,
    reconnecting when it drops."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    def _dispatch(self, subscription: Subscription) -> Callable[[Any, int, str, str], None]:
        def on_notification(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            _call(subscription, payload)

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
                self._heard()
                await lost.wait()
                log.warning("notifications.listen_lost")
            finally:
                # Whatever happened, messages may now go unheard: tell every subscriber.
                self._lost()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=1)
            await asyncio.sleep(RECONNECT_S)


class DeafListener(_Subscribers):
    """Hears nothing, ever: behind a pooler in transaction mode with no direct URL to
    ``LISTEN`` on (a ``LISTEN`` through the pooler would succeed and then hear nothing, as
    the server connection it ran on goes back to the pool).

    Subscribers stay as they are told to be when messages may be missed (``on_lost``, at
    :meth:`start`): each falls back to what it does without notifications.
    """

    def __init__(self, reason: str) -> None:
        super().__init__()
        self._reason = reason

    async def _run(self) -> None:
        log.warning("notifications.not_listening", reason=self._reason)


class PollingListener(_Subscribers):
    """SQLite: reads ``notification_log`` every ``poll_s`` on a connection of its own.

    It starts hearing at the newest row when it connects (what was sent before is the
    state subscribers read in ``on_listening``), and delivers each later row once, in
    order: SQLite serialises writers, so rows commit in id order and none can appear
    behind one already read.
    """

    def __init__(self, engine: SQLiteEngine, *, poll_s: float = POLL_S) -> None:
        super().__init__()
        self._connect: dict[str, Any] = dict(engine.connection_kwargs)
        self._poll_s = poll_s

    async def _run(self) -> None:
        while True:
            try:
                async with aiosqlite.connect(**self._connect) as connection:
                    after = await self._newest(connection)
                    self._heard()
                    try:
                        while True:
                            await asyncio.sleep(self._poll_s)
                            after = await self._read(connection, after)
                    finally:
                        self._lost()
            except (OSError, aiosqlite.Error) as exc:
                log.warning("notifications.poll_failed", error=str(exc))
            await asyncio.sleep(RECONNECT_S)

    @staticmethod
    async def _newest(connection: aiosqlite.Connection) -> int:
        async with connection.execute("SELECT coalesce(max(id), 0) FROM notification_log") as rows:
            found = await rows.fetchone()
        return int(found[0]) if found is not None else 0

    async def _read(self, connection: aiosqlite.Connection, after: int) -> int:
        async with connection.execute(
            "SELECT id, channel, payload FROM notification_log WHERE id > ? ORDER BY id",
            (after,),
        ) as rows:
            found = list(await rows.fetchall())
        for row_id, channel, payload in found:
            self._deliver(str(channel), str(payload))
            after = int(row_id)
        return after
