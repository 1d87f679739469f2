"""Recorded health verdicts steer every serving process's LLM client.

A checker records one verdict per upstream (``service.record``); each serving process
runs one :class:`HealthWatcher`, which reads the latest verdicts and takes an upstream out
of rotation while its latest verdict says ``down``, putting it back once a later one does
not. It reads when told (PostgreSQL ``NOTIFY``, and whenever the listener starts listening
again, since anything may have been missed meanwhile), and every ``poll_s`` while it
cannot be told (SQLite, or the listening connection is down).

A verdict older than ``stale_after_s`` steers nothing, so a checker that dies cannot keep
an upstream out forever. The watcher only undoes what it did: an ``ok`` verdict does not
clear the client's passive ejections (this process's own failures are fresher news), and
with no checker at all passive health works as before.

The watcher also probes every upstream once when it starts (:meth:`startup_probe`), so
readiness can say ``simulated`` or ``down`` before any checker has recorded anything.
That probe is reported, never applied: one process's view at start-up is not a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
from prometheus_client.core import GaugeMetricFamily

from functions.core.db.errors import as_database_error
from functions.core.db.notifications import Subscription
from functions.core.health.schemas import HealthCheckOut
from functions.core.health.service import CHANNEL, latest, verdict_of
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from functions.core.llm.client import LLMClient

POLL_S = 5.0
STALE_AFTER_S = 180.0
HEALTH_STATUSES = ("ok", "degraded", "down")
log = get_logger(__name__)


class StartupProbe(msgspec.Struct, frozen=True, kw_only=True):
    """This process's own probe of every upstream when it started (never stored)."""

    checked_at: datetime
    verdicts: list[HealthCheckOut]


class HealthWatcher:
    """Applies the latest recorded verdicts to one process's :class:`LLMClient`.

    Subscribe :meth:`subscription` on the process's notification listener (PostgreSQL),
    then :meth:`start`; :meth:`stop` when the process stops.
    """

    def __init__(
        self,
        llm: LLMClient,
        *,
        poll_s: float = POLL_S,
        stale_after_s: float = STALE_AFTER_S,
        probe_on_start: bool = True,
    ) -> None:
        self._llm = llm
        self._poll_s = poll_s
        self.stale_after = timedelta(seconds=stale_after_s)
        self._probe_on_start = probe_on_start
        self._verdicts: dict[str, HealthCheckOut] = {}
        self._marked_down: set[str] = set()
        self._listening = False
        self._must_read = True
        self._read_failing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[StartupProbe | None] | None = None

    def subscription(self) -> Subscription:
        """Read again on every recorded check, and whenever listening (re)starts."""
        return Subscription(
            channel=CHANNEL,
            on_message=lambda _payload: self._read_soon(),
            on_listening=self._heard,
            on_lost=self._deaf,
        )

    def start(self) -> None:
        # A context of their own: these tasks outlive whatever opened the runtime and must
        # never join a transaction it had open.
        context = contextvars.Context()
        self._task = asyncio.create_task(
            self._run(), name="switchboard-health-watcher", context=context
        )
        if self._probe_on_start:
            self._probe = asyncio.create_task(
                self._probe_once(), name="switchboard-startup-probe", context=context
            )

    async def stop(self) -> None:
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._probe = None

    @property
    def verdicts(self) -> dict[str, HealthCheckOut]:
        """The latest recorded verdicts last read, by upstream URL (every upstream read)."""
        return dict(self._verdicts)

    def is_fresh(self, verdict: HealthCheckOut, now: datetime | None = None) -> bool:
        """Whether ``verdict`` is young enough to steer routing."""
        return verdict.checked_at + self.stale_after > (now or datetime.now(UTC))

    async def startup_probe(self, timeout_s: float) -> StartupProbe | None:
        """The probe made at start, waiting up to ``timeout_s`` for it; None without one."""
        if self._probe is None:
            return None
        await asyncio.wait({self._probe}, timeout=timeout_s)
        if not self._probe.done() or self._probe.cancelled():
            return None
        return self._probe.result()

    def collect(self) -> list[Metric]:
        """The latest recorded verdict of each configured upstream, as Prometheus gauges."""
        status = GaugeMetricFamily(
            "switchboard_llm_upstream_health",
            "1 for the status (ok, degraded, down) of the upstream's latest recorded check.",
            labels=["upstream", "status"],
        )
        checked = GaugeMetricFamily(
            "switchboard_llm_upstream_health_checked_timestamp_seconds",
            "When the upstream's latest recorded check ran (Unix time).",
            labels=["upstream"],
        )
        for upstream in self._llm.stats().upstreams:
            verdict = self._verdicts.get(upstream.url)
            if verdict is None:
                continue
            for name in HEALTH_STATUSES:
                status.add_metric([upstream.url, name], 1.0 if verdict.status == name else 0.0)
            checked.add_metric([upstream.url], verdict.checked_at.timestamp())
        return [status, checked]

    # -- the loop -----------------------------------------------------------------------

    def _read_soon(self) -> None:
        self._must_read = True
        self._wake.set()

    def _heard(self) -> None:
        self._listening = True
        self._read_soon()

    def _deaf(self) -> None:
        # No read now (the database is likely what went away): polling starts instead.
        self._listening = False
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self._must_read:
                    self._must_read = False
                    await self._read()
                next_expiry_s = self._apply()
            except Exception as exc:  # a bug here must not stop routing updates for good
                log.error("health.watch_failed", error=repr(exc))
                next_expiry_s = None
            poll_s = None if self._listening else self._poll_s
            timeout = min((s for s in (next_expiry_s, poll_s) if s is not None), default=None)
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                if not self._listening:
                    self._must_read = True
            self._wake.clear()

    async def _read(self) -> None:
        try:
            verdicts = await latest()
        except Exception as exc:
            # Keep the verdicts read before: they go stale on their own.
            if as_database_error(exc) is None:
                log.error("health.read_failed", error=repr(exc))
            elif not self._read_failing:
                log.warning("health.read_failed", error=str(exc))
            self._read_failing = True
            return
        if self._read_failing:
            log.info("health.read_recovered")
        self._read_failing = False
        self._verdicts = {verdict.upstream: verdict for verdict in verdicts}

    def _apply(self) -> float | None:
        """Steer the client; returns the seconds until a verdict applied now goes stale."""
        now = datetime.now(UTC)
        next_expiry_s: float | None = None
        for upstream in self._llm.stats().upstreams:
            url = upstream.url
            verdict = self._verdicts.get(url)
            if verdict is not None and verdict.status == "down" and self.is_fresh(verdict, now):
                left = (verdict.checked_at + self.stale_after - now).total_seconds()
                next_expiry_s = left if next_expiry_s is None else min(next_expiry_s, left)
                if url not in self._marked_down:
                    self._llm.mark_down(url)
                    self._marked_down.add(url)
            elif url in self._marked_down:
                if verdict is not None and verdict.status == "down":
                    log.warning("health.verdict_stale", upstream=url, checked_at=verdict.checked_at)
                self._llm.mark_up(url)
                self._marked_down.discard(url)
        return next_expiry_s

    async def _probe_once(self) -> StartupProbe | None:
        checked_at = datetime.now(UTC)
        try:
            results = await self._llm.health()
        except Exception as exc:  # reported as "no probe"; routing does not depend on it
            log.warning("health.startup_probe_failed", error=repr(exc))
            return None
        return StartupProbe(
            checked_at=checked_at, verdicts=[verdict_of(result, checked_at) for result in results]
        )
