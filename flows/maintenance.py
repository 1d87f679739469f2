"""The maintenance flow: retire what dead processes left pending, prune what expired.

Every few minutes by default (``SWITCHBOARD_MAINTENANCE_INTERVAL_S``), through the same
core services every serving process runs on its own (``functions.core.liveness``):

- replies still ``pending`` whose process's lease lapsed (a gateway killed mid-send), or
  that outlived the longest a reply can take, are retired as ``failed``/``interrupted``,
  so their conversations accept sends again even when no gateway runs any more;
- leases long lapsed and idempotency keys past ``SWITCHBOARD_IDEMPOTENCY_WINDOW_S`` are
  deleted, and so are health checks past ``SWITCHBOARD_HEALTH_RETENTION_DAYS``.

What it did is the run's ``maintenance-report`` artifact. Every step is idempotent, so
steps and the whole run are retried.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import progress
from flows.health_check import RetentionDays, prune_health_checks
from flows.runtime import flow_runtime
from functions.core.liveness import service as liveness

NAME = "maintenance"
ARTIFACT_KEY = "maintenance-report"
DATABASE_TIMEOUT_S = 60
FLOW_TIMEOUT_S = 300


class MaintenanceReport(msgspec.Struct, kw_only=True):
    """What one run of the maintenance flow did."""

    ran_at: datetime
    retired: list[liveness.Retired]
    pending_bound_s: float
    health_checks_pruned: int
    health_retention_days: float
    idempotency_window_s: float

    def markdown(self) -> str:
        lines = [
            f"# Maintenance, {self.ran_at:%Y-%m-%d %H:%M:%S} UTC",
            "",
            f"- **{len(self.retired)}** pending repl(ies) retired as `interrupted` (their "
            "process is gone, or they outlived the bound their owner stored with them; "
            f"{self.pending_bound_s:g} s for replies stored without one)",
            f"- **{self.health_checks_pruned}** health check(s) older than "
            f"{self.health_retention_days:g} day(s) pruned",
            f"- leases lapsed over {liveness.LEASE_KEEP} ago and idempotency keys older than "
            f"{self.idempotency_window_s:g} s pruned",
        ]
        if self.retired:
            lines += ["", "| conversation | reply |", "| --- | --- |"]
            lines += [f"| {r.conversation_id} | {r.message_id} |" for r in self.retired]
        return "\n".join(lines)

    def summary(self) -> list[str]:
        """The report for a terminal."""
        lines = [f"retired {len(self.retired)} interrupted repl(ies)"]
        lines += [f"  conversation {r.conversation_id}: reply {r.message_id}" for r in self.retired]
        lines.append(f"pruned {self.health_checks_pruned} health check(s)")
        lines.append("pruned lapsed leases and expired idempotency keys")
        return lines


@task(
    name="retire-interrupted-replies",
    description="Retire pending replies whose process's lease lapsed, or that are too old.",
    retries=2,
    retry_delay_seconds=[2, 10],
    timeout_seconds=DATABASE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def retire_interrupted_replies(bound: timedelta) -> list[liveness.Retired]:
    return await liveness.sweep_interrupted(bound=bound)


@task(
    name="prune-leases-and-idempotency-keys",
    description="Delete long-lapsed process leases and idempotency keys past their window.",
    retries=2,
    retry_delay_seconds=[2, 10],
    timeout_seconds=DATABASE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def prune_leases_and_keys(idempotency_window: timedelta) -> None:
    await liveness.prune(idempotency_window=idempotency_window)


@flow(
    name=NAME,
    description="Retire replies left pending by processes that died; prune expired leases, "
    "idempotency keys and health checks.",
    retries=1,
    retry_delay_seconds=30,
    timeout_seconds=FLOW_TIMEOUT_S,
    persist_result=False,
    log_prints=False,
)
async def maintenance(health_retention_days: RetentionDays | None = None) -> MaintenanceReport:
    """Retire interrupted replies, then prune leases, idempotency keys and health checks.

    Every step is idempotent: a failed run is retried once, 30 s later.

    Args:
        health_retention_days: Prune health checks older than this many days. Empty:
            SWITCHBOARD_HEALTH_RETENTION_DAYS.
    """
    async with flow_runtime(NAME, steps=3, use_llm=False) as rt:
        settings = rt.settings
        retention = (
            settings.health_retention_days
            if health_retention_days is None
            else health_retention_days
        )
        bound = liveness.pending_bound(settings)
        window = timedelta(seconds=settings.idempotency_window_s)
        progress.step("retiring replies of processes that are gone")
        retired = await retire_interrupted_replies(bound)
        progress.step("pruning leases and idempotency keys")
        await prune_leases_and_keys(window)
        progress.step("pruning old health checks")
        pruned = await prune_health_checks(retention)
        report = MaintenanceReport(
            ran_at=datetime.now(UTC),
            retired=retired,
            pending_bound_s=bound.total_seconds(),
            health_checks_pruned=pruned,
            health_retention_days=retention,
            idempotency_window_s=window.total_seconds(),
        )
        for reply in retired:
            rt.log.warning(
                "maintenance.reply_interrupted",
                conversation_id=str(reply.conversation_id),
                message_id=str(reply.message_id),
            )
        await acreate_markdown_artifact(
            key=ARTIFACT_KEY, markdown=report.markdown(), description="What maintenance did."
        )
        rt.run.add("retired", len(retired))
        rt.run.add("health_checks_pruned", pruned)
        rt.log.info("maintenance.done", retired=len(retired), health_checks_pruned=pruned)
    return report
