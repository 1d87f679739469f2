"""Which processes are alive, and retiring the replies of those that are not.

Every process that sends holds a :class:`Lease`: a row in ``process_lease`` it renews a
few times per ``lease_ttl_s``. A pending reply names the process generating it
(``message.owner_instance``). When that process dies (``kill -9``, a lost machine) its
lease lapses within ``lease_ttl_s`` and its pending replies are retired as ``interrupted``:
by the next send to the conversation (the claim checks the lease), and by
:func:`sweep_interrupted`, which every serving process runs at start and periodically (the
maintenance flow calls it too). Whatever the leases say, no reply stays pending longer
than the longest a reply can take plus a margin (``pending_bound``): its owner's, which
the claim stores with the reply (``message.stale_after``), so that a process or a flow
with shorter timeouts never judges another's reply by its own.

A live process's own pending replies are its to judge: it knows which it is answering
(``Lease.replies``, see ``liveness.replies``). One it is not answering (a claim that
committed while its answer was lost with the connection) is retired at once, in the
background, by the send that lost it (:meth:`Lease.retire_later`), and by the lease's
own bookkeeping (:func:`retire_abandoned`, every third of ``lease_ttl_s``) if that could
not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.db.errors import SchemaMissingError, as_database_error
from functions.core.db.sql import fetch
from functions.core.liveness.replies import OwnReplies
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from functions.core.settings import Settings

log = get_logger(__name__)

INTERRUPTED_MESSAGE = "the process generating this reply stopped"
ABANDONED_MESSAGE = (
    "the send that stored this message never learned that it was stored (its database "
    "connection broke, or it was cancelled, at that moment), so no reply was generated; "
    "send it again"
)
# How long a send that lost its claim's answer keeps trying to retire what it may have
# stored: long enough for a commit still in flight on the server to land, and for a short
# outage; the lease's bookkeeping covers anything later.
ORPHAN_RETRY_S = 10.0
# Rows retired by one statement (a bound on its parameters).
RETIRE_BATCH = 500
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
    """This process's lease; ``instance_id`` is what its pending replies name, and
    ``replies`` says which of them it is still answering."""

    def __init__(self, ttl_s: float) -> None:
        self.instance_id = uuid.uuid4()
        self.ttl = timedelta(seconds=ttl_s)
        self.replies = OwnReplies()
        self._renewed_at: datetime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[bool]] = set()

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
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="switchboard-lease"),
            asyncio.create_task(self._keep_books(), name="switchboard-own-replies"),
        ]

    def retire_later(self, reply_id: uuid.UUID) -> None:
        """In the background, retire ``reply_id`` if its claim stored it: the claim's outcome
        is unknown and nobody here will answer it (best effort; the lease's bookkeeping
        covers the rest)."""
        self.replies.abandoned(reply_id)
        task = asyncio.get_running_loop().create_task(
            retire_orphan(reply_id, self.instance_id), name="switchboard-retire-orphan"
        )
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def stop(self, *, release: bool) -> None:
        """Stop renewing; ``release`` deletes the lease (a clean exit, replies recorded).

        A released lease makes every sweep retire what this process left pending, so
        retirements still running in the background are not waited for.
        """
        for retiring in list(self._retiring):
            retiring.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if release:
            try:
                await fetch("DELETE FROM process_lease WHERE id = {}", self.instance_id)
            except Exception as exc:  # the lease lapses by itself; say why it stayed
                log.warning("lease.release_failed", error=str(exc))

    async def _heartbeat(self) -> None:
        failures = LoopFailures("lease.renew_failed")
        while True:
            try:
                await self.renew()
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            await asyncio.sleep(self.ttl.total_seconds() / 3)

    async def _keep_books(self) -> None:
        """Every process that sends judges its own replies (a flow as well as a gateway):
        while its lease is alive, nobody else may. A task of its own, so a slow query here
        never delays a renewal."""
        failures = LoopFailures("replies.retire_abandoned_failed")
        while True:
            try:
                await retire_abandoned(self)
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            await asyncio.sleep(self.ttl.total_seconds() / 3)


class LoopFailures:
    """How one background loop reports its failures.

    A bug is logged with its traceback every time. The database being away, or not
    migrated yet, is one warning when it starts and one line when the loop works again:
    a loop that runs every few seconds must not repeat the same line until an operator
    acts (an unmigrated database named ``relation "process_lease" does not exist`` every
    3 s). The state is the loop's own, so two runtimes in one process never share it.
    """

    def __init__(self, event: str) -> None:
        self._event = event
        self._failing = False

    def failed(self, exc: Exception) -> None:
        error = as_database_error(exc)
        if error is None:
            log.exception(self._event)
            return
        if not self._failing:
            if isinstance(error, SchemaMissingError):
                log.warning("database.not_migrated", step=self._event, error=str(error))
            else:
                log.warning(self._event, error=str(exc))
        self._failing = True

    def succeeded(self) -> None:
        if self._failing:
            log.info(self._event.removesuffix("_failed") + "_recovered")
        self._failing = False


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
    """Retire every pending reply whose process is gone, or that outlived its bound.

    A reply's bound is its owner's (``message.stale_after``, stored by the claim from the
    owner's timeouts): a sweeper with shorter timeouts never retires a reply its owner may
    still be generating. ``bound`` (the sweeper's) applies only to replies stored without
    one, before there was one.

    ``spare``: the sweeping process's own instance, alive by definition (its lease may
    have lapsed while the database was out of reach; its replies are still its own, and
    :func:`retire_abandoned` judges them one by one).
    """
    now = now or datetime.now(UTC)
    rows = await fetch(
        "UPDATE message SET status = 'failed', error_code = 'interrupted', "
        "error_message = {}, completed_at = {} "
        "WHERE status = 'pending' AND (stale_after < {} "
        "OR (stale_after IS NULL AND created_at < {}) OR (owner_instance IS NOT NULL AND "
        "owner_instance <> {} AND NOT EXISTS (SELECT 1 FROM process_lease l "
        "WHERE l.id = message.owner_instance AND l.expires_at > {}))) "
        "RETURNING id, conversation",
        INTERRUPTED_MESSAGE,
        now,
        now,
        now - bound,
        spare or uuid.UUID(int=0),
        now,
    )
    retired = _retired(rows)
    if retired:
        log.warning("replies.retired_interrupted", count=len(retired))
    return retired


async def _retire_own(
    reply_ids: list[uuid.UUID], instance_id: uuid.UUID, now: datetime
) -> list[Retired]:
    """Retire those of ``reply_ids`` that are still pending and name ``instance_id``."""
    retired: list[Retired] = []
    for start in range(0, len(reply_ids), RETIRE_BATCH):
        batch = reply_ids[start : start + RETIRE_BATCH]
        rows = await fetch(
            # Only placeholders are joined in; every value goes in as a parameter.
            "UPDATE message SET status = 'failed', error_code = 'interrupted', "  # noqa: S608
            "error_message = {}, completed_at = {} WHERE status = 'pending' AND "
            "owner_instance = {} AND id IN (" + ", ".join(["{}"] * len(batch)) + ") "
            "RETURNING id, conversation",
            ABANDONED_MESSAGE,
            now,
            instance_id,
            *batch,
        )
        retired += _retired(rows)
    return retired


async def retire_orphan(reply_id: uuid.UUID, instance_id: uuid.UUID) -> bool:
    """Retire one reply of this process that nobody here answers, if it was stored.

    Called when a claim's outcome is unknown (its answer was lost with its connection).
    Tried for ``ORPHAN_RETRY_S`` with backoff: the database may be away a moment, and a
    claim cut off mid-flight may still commit on the server a moment later. Returns
    whether a pending row was retired.
    """
    deadline = time.monotonic() + ORPHAN_RETRY_S
    delay = 0.1
    while True:
        try:
            retired = await _retire_own([reply_id], instance_id, datetime.now(UTC))
        except Exception as exc:
            if as_database_error(exc) is None:
                log.exception("reply.orphan_retire_failed", message_id=str(reply_id))
                return False
            retired = []
        if retired:
            log.warning(
                "reply.orphan_retired",
                message_id=str(reply_id),
                conversation_id=str(retired[0].conversation_id),
            )
            return True
        if time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def retire_abandoned(lease: Lease, *, now: datetime | None = None) -> list[Retired]:
    """Retire this process's pending replies that it is not answering (``lease.replies``).

    A live process's replies are spared by every other sweep while its lease is alive, so
    this is the only way one it lost track of is freed before ``pending_bound``.
    """
    read_at = time.monotonic()
    rows = await fetch(
        "SELECT id FROM message WHERE status = 'pending' AND owner_instance = {}",
        lease.instance_id,
    )
    orphans = lease.replies.settle({_uuid(row["id"]) for row in rows}, read_at)
    if not orphans:
        return []
    retired = await _retire_own(orphans, lease.instance_id, now or datetime.now(UTC))
    if retired:
        log.warning("replies.retired_abandoned", count=len(retired))
    return retired


def _retired(rows: list[dict[str, Any]]) -> list[Retired]:
    """What an ``UPDATE ... RETURNING id, conversation`` retired."""
    return [
        Retired(message_id=_uuid(row["id"]), conversation_id=_uuid(row["conversation"]))
        for row in rows
    ]


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


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
        failures = LoopFailures("sweep.failed")
        while True:
            try:
                spare = None
                if self._lease is not None:
                    # Renewed first: after an outage, this process's lease is live again
                    # before it judges anyone else's.
                    await self._lease.renew()
                    spare = self._lease.instance_id
                # Its own replies are spared here; its lease's bookkeeping judges them.
                await sweep_interrupted(bound=self._bound, spare=spare)
                await prune(idempotency_window=self._window)
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            await asyncio.sleep(self._period_s)
