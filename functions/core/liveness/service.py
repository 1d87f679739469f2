"""Which processes are alive, and retiring the replies of those that are not.

Every process that sends holds a :class:`Lease`: a row in ``process_lease`` it renews a
few times per ``lease_ttl_s``. A pending reply names the process generating it
(``message.owner_instance``). When that process dies (``kill -9``, a lost machine) its
lease lapses within ``lease_ttl_s`` and its pending replies are retired as ``interrupted``:
by the next send to the conversation (the claim checks the lease), and by
:func:`sweep_interrupted`, which every serving process runs at start and periodically (the
maintenance flow calls it too). Whatever the leases say, no reply stays pending longer
than the longest a reply can take plus a margin (``pending_bound``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from functions.core.db.errors import as_database_error
from functions.core.db.sql import fetch
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from functions.core.settings import Settings

log = get_logger(__name__)

INTERRUPTED_MESSAGE = "the process generating this reply stopped"
# Past the last moment a live process could still write a reply's outcome.
PENDING_MARGIN = timedelta(seconds=60)
# Lapsed leases are kept this long (for a person looking at what died), then pruned.
LEASE_KEEP = timedelta(hours=1)


def pending_bound(settings: Settings) -> timedelta:
    """The longest a reply can legitimately stay pending: the model's whole budget, the
    outcome write's retries and the shutdown grace, plus a margin."""
    return (
        timedelta(seconds=settings.llm_total_timeout_s)
        + timedelta(seconds=settings.outcome_retry_s)
        + timedelta(seconds=settings.shutdown_grace_s)
        + PENDING_MARGIN
    )


class Lease:
    """This process's lease; ``instance_id`` is what its pending replies name."""

    def __init__(self, ttl_s: float) -> None:
        self.instance_id = uuid.uuid4()
        self.ttl = timedelta(seconds=ttl_s)
        self._renewed_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def renew(self) -> None:
        now = datetime.now(UTC)
        await fetch(
            "INSERT INTO process_lease (id, host, pid, started_at, heartbeat_at, expires_at) "
            "VALUES ({}, {}, {}, {}, {}, {}) ON CONFLICT (id) DO UPDATE "
            "SET heartbeat_at = {}, expires_at = {}",
            self.instance_id,
            socket.gethostname()[:255],
            os.getpid(),
            now,
            now,
            now + self.ttl,
            now,
            now + self.ttl,
        )
        self._renewed_at = now

    async def ensure(self) -> None:
        """Renew now unless the heartbeat did so recently: a claim must name a live lease."""
        if self._renewed_at is None or datetime.now(UTC) - self._renewed_at > self.ttl / 3:
            await self.renew()

    def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="switchboard-lease")

    async def stop(self, *, release: bool) -> None:
        """Stop renewing; ``release`` deletes the lease (a clean exit, replies recorded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if release:
            try:
                await fetch("DELETE FROM process_lease WHERE id = {}", self.instance_id)
            except Exception as exc:  # the lease lapses by itself; say why it stayed
                log.warning("lease.release_failed", error=str(exc))

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.renew()
            except Exception as exc:
                if as_database_error(exc) is None:
                    log.exception("lease.renew_failed")
                else:
                    log.warning("lease.renew_failed", error=str(exc))
            await asyncio.sleep(self.ttl.total_seconds() / 3)


async def expire_dead_neighbours(lease: Lease) -> int:
    """At start: end the leases of this host's processes that are gone (a restart after a
    crash), so their replies are retired now instead of when their leases lapse.

    A lease from this host whose pid is not running, or is this process's own pid (a
    container restarted: same host name, same pid 1), belonged to a process that died.
    """
    host = socket.gethostname()[:255]
    rows = await fetch(
        "SELECT id, pid FROM process_lease WHERE host = {} AND id <> {} AND expires_at > {}",
        host,
        lease.instance_id,
        datetime.now(UTC),
    )
    dead = [
        row["id"] for row in rows if row["pid"] == os.getpid() or not process_running(row["pid"])
    ]
    for instance_id in dead:
        await fetch(
            "UPDATE process_lease SET expires_at = {} WHERE id = {}", datetime.now(UTC), instance_id
        )
    return len(dead)


def process_running(pid: int) -> bool:
    """Whether a process with this pid runs on this host (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Retired(msgspec.Struct, frozen=True, kw_only=True):
    message_id: uuid.UUID
    conversation_id: uuid.UUID


async def sweep_interrupted(
    *, bound: timedelta, now: datetime | None = None, spare: uuid.UUID | None = None
) -> list[Retired]:
    """Retire every pending reply whose process is gone, or that outlived ``bound``.

    ``spare``: the sweeping process's own instance, alive by definition (its lease may
    have lapsed while the database was out of reach; its replies are still its own).
    """
    now = now or datetime.now(UTC)
    rows = await fetch(
        "UPDATE message SET status = 'failed', error_code = 'interrupted', "
        "error_message = {}, completed_at = {} "
        "WHERE status = 'pending' AND (created_at < {} OR (owner_instance IS NOT NULL AND "
        "owner_instance <> {} AND NOT EXISTS (SELECT 1 FROM process_lease l "
        "WHERE l.id = message.owner_instance AND l.expires_at > {}))) "
        "RETURNING id, conversation",
        INTERRUPTED_MESSAGE,
        now,
        now - bound,
        spare or uuid.UUID(int=0),
        now,
    )
    retired = [Retired(message_id=row["id"], conversation_id=row["conversation"]) for row in rows]
    if retired:
        log.warning("replies.retired_interrupted", count=len(retired))
    return retired


async def prune(*, now: datetime | None = None, idempotency_window: timedelta) -> None:
    """Forget leases long lapsed and idempotency keys past their window."""
    now = now or datetime.now(UTC)
    await fetch("DELETE FROM process_lease WHERE expires_at < {}", now - LEASE_KEEP)
    await fetch("DELETE FROM idempotency_key WHERE created_at < {}", now - idempotency_window)


class Sweeper:
    """A serving process's own sweep, at start and every lease period, until stopped."""

    def __init__(self, settings: Settings, lease: Lease | None = None) -> None:
        self._lease = lease
        self._bound = pending_bound(settings)
        self._period_s = settings.lease_ttl_s
        self._window = timedelta(seconds=settings.idempotency_window_s)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="switchboard-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                spare = None
                if self._lease is not None:
                    # Renewed first: after an outage, this process's lease is live again
                    # before it judges anyone else's.
                    await self._lease.renew()
                    spare = self._lease.instance_id
                await sweep_interrupted(bound=self._bound, spare=spare)
                await prune(idempotency_window=self._window)
            except Exception as exc:
                if as_database_error(exc) is None:
                    log.exception("sweep.failed")
                else:
                    log.warning("sweep.failed", error=str(exc))
            await asyncio.sleep(self._period_s)
