"""The health-check flow: probe every vLLM upstream once, record one verdict each.

Every minute by default (``SWITCHBOARD_HEALTH_CHECK_INTERVAL_S``), one run for the whole
deployment however many function processes serve: each upstream in
``SWITCHBOARD_LLM_URLS`` is asked for ``/health``, ``/v1/models`` (with each model's
``max_model_len``), its ``vllm:*`` load gauges from ``/metrics`` and ``/version``, all at
once, and, only when ``SWITCHBOARD_HEALTH_CHECK_COMPLETION`` asks for it, for one token of
a real completion. One row per upstream goes to ``health_check``
(``functions.core.health.service.record``); on commit every serving process hears of it
and stops (or resumes) sending to an upstream within seconds. Verdicts past
``SWITCHBOARD_HEALTH_RETENTION_DAYS`` are pruned.

Thin over core: the probing is ``functions.core.health.probing`` (which any other checker
calls, ``probing.check`` in one call), and what a probe means (``ok``, ``degraded``,
``down``) is decided in ``functions.core.health.service``, once: a failed completion is
reported as an error of the check, which makes a healthy upstream ``degraded``. The flow
adds the tasks' timeouts and retries, the artifact and the run's log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import msgspec
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows import progress
from flows.runtime import flow_runtime
from functions.core.health import probing
from functions.core.health import service as health
from functions.core.health.probing import CompletionProbe, Probed, UpstreamReport

if TYPE_CHECKING:
    from functions.core.health.schemas import HealthCheckOut
    from functions.core.llm.client import LLMClient
    from functions.core.llm.schemas import UpstreamHealth
    from functions.core.settings import Settings

NAME = "health-check"
ARTIFACT_KEY = "upstream-health"
# The probe's requests each give up after 5 s (the LLM client's probe timeout); a
# completion after SWITCHBOARD_HEALTH_CHECK_COMPLETION_TIMEOUT_S (at most 60 s).
PROBE_TIMEOUT_S = 30
COMPLETION_TIMEOUT_S = 75
DATABASE_TIMEOUT_S = 30
# A run that would overlap the next one is refused by the deployment's concurrency limit;
# this bounds a stuck run (probe, completion and the database writes fit well within).
FLOW_TIMEOUT_S = 100
# A database blip: retried twice, quickly; a probe is never retried (its failure is the
# finding, and the next run is one interval away).
DATABASE_RETRIES = 2
DATABASE_RETRY_DELAYS_S: list[float] = [1.0, 5.0]
# A flow parameter: Prefect validates it, and the UI's form shows the bounds.
RetentionDays = Annotated[float, Field(gt=0, le=3650)]


class HealthCheckReport(msgspec.Struct, kw_only=True):
    """What one run of the health check did."""

    checked_at: datetime
    upstreams: list[UpstreamReport]
    completion: bool
    pruned: int

    def markdown(self) -> str:
        lines = [
            f"# Upstream health, {self.checked_at:%Y-%m-%d %H:%M:%S} UTC",
            "",
            "| upstream | status | latency ms | models (max_model_len) | running | waiting "
            "| KV cache | completion ms | error |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for report in self.upstreams:
            verdict = report.verdict
            models = ", ".join(
                f"{model} ({report.max_model_len.get(model) or '?'})" for model in verdict.models
            )
            gauges = verdict.gauges
            kv = None if gauges.kv_cache_usage is None else f"{gauges.kv_cache_usage:.0%}"
            cells = [
                verdict.upstream,
                f"**{verdict.status}**",
                _cell(verdict.latency_ms),
                models or "-",
                _cell(gauges.requests_running),
                _cell(gauges.requests_waiting),
                kv or "-",
                _cell(report.completion_ms) if self.completion else "not asked",
                (verdict.error or "").replace("|", "/") or "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Pruned {self.pruned} check(s) past retention."]
        return "\n".join(lines)

    def summary(self) -> list[str]:
        """The report for a terminal: one line per upstream, its error on the next."""
        lines = []
        for report in self.upstreams:
            verdict, gauges = report.verdict, report.verdict.gauges
            models = ", ".join(
                f"{model} (max_model_len {report.max_model_len.get(model) or '?'})"
                for model in verdict.models
            )
            parts = [f"{verdict.status:8}", verdict.upstream, f"{_cell(verdict.latency_ms)} ms"]
            parts += [models or "no models"]
            parts += [f"running {_cell(gauges.requests_running)}"]
            parts += [f"waiting {_cell(gauges.requests_waiting)}"]
            if report.completion_ms is not None:
                parts += [f"one token in {report.completion_ms:g} ms"]
            lines.append("  ".join(parts))
            if verdict.error:
                lines.append(f"         {verdict.error}")
        lines.append(f"pruned {self.pruned} check(s) past retention")
        return lines


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@task(
    name="probe-upstreams",
    description="GET /health, /v1/models, /metrics and /version of every upstream, at once.",
    retries=0,
    timeout_seconds=PROBE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def probe_upstreams(settings: Settings, llm: LLMClient) -> Probed:
    return await probing.probe_upstreams(settings, llm)


@task(
    name="one-token-completions",
    description="One real one-token completion per healthy upstream (costs GPU time).",
    retries=0,
    timeout_seconds=COMPLETION_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def probe_completions(
    settings: Settings, results: list[UpstreamHealth]
) -> list[CompletionProbe]:
    return await probing.probe_completions(settings, results)


@task(
    name="record-verdicts",
    description="One health_check row per upstream; every serving process hears of it.",
    retries=DATABASE_RETRIES,
    retry_delay_seconds=DATABASE_RETRY_DELAYS_S,
    timeout_seconds=DATABASE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def record_verdicts(results: list[UpstreamHealth]) -> list[HealthCheckOut]:
    return await health.record(results)


@task(
    name="prune-health-checks",
    description="Delete recorded health checks older than the retention.",
    retries=DATABASE_RETRIES,
    retry_delay_seconds=DATABASE_RETRY_DELAYS_S,
    timeout_seconds=DATABASE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def prune_health_checks(retention_days: float) -> int:
    """Delete health checks older than ``retention_days``; returns how many went."""
    return await health.prune(datetime.now(UTC) - timedelta(days=retention_days))


@flow(
    name=NAME,
    description="Probe every vLLM upstream once and record one verdict each; routing in "
    "every serving process follows it within seconds.",
    retries=0,
    timeout_seconds=FLOW_TIMEOUT_S,
    persist_result=False,
    log_prints=False,
)
async def health_check(
    send_completion: bool | None = None, retention_days: RetentionDays | None = None
) -> HealthCheckReport:
    """Probe every upstream in SWITCHBOARD_LLM_URLS and record one verdict each.

    Not retried: a run that fails is replaced by the next one, one interval later.

    Args:
        send_completion: Also ask each healthy upstream for one token of a real completion
            (costs GPU time). Empty: SWITCHBOARD_HEALTH_CHECK_COMPLETION.
        retention_days: Prune recorded checks older than this many days. Empty:
            SWITCHBOARD_HEALTH_RETENTION_DAYS.
    """
    async with flow_runtime(NAME, steps=4) as rt:
        settings, log = rt.settings, rt.log
        completion = (
            settings.health_check_completion if send_completion is None else send_completion
        )
        retention = settings.health_retention_days if retention_days is None else retention_days
        progress.plan(4 if completion else 3)  # the runtime's opening counts as the first
        progress.step(f"probing {len(settings.llm_urls)} upstream(s)")
        probed = await probe_upstreams(settings, rt.runtime.require_llm())
        results = probed.results
        completion_ms: dict[str, float] = {}
        if completion:
            progress.step("asking each healthy upstream for one token")
            completions = await probe_completions(settings, results)
            results, completion_ms = probing.with_completions(results, completions)
        progress.step("recording the verdicts")
        verdicts = await record_verdicts(results)
        progress.step("pruning old checks")
        pruned = await prune_health_checks(retention)
        reports = probing.reports_of(verdicts, probed, completion_ms)
        # Pushed with how the run ended (switchboard_flow_last_run_items{kind}).
        rt.run.add("upstreams", len(reports))
        rt.run.add("unhealthy", sum(1 for report in reports if report.verdict.status != "ok"))
        rt.run.add("pruned", pruned)
        for report in reports:
            verdict = report.verdict
            log_at = log.info if verdict.status == "ok" else log.warning
            log_at(
                "health.verdict",
                upstream=verdict.upstream,
                status=verdict.status,
                latency_ms=verdict.latency_ms,
                models=verdict.models,
                max_model_len=report.max_model_len,
                requests_running=verdict.gauges.requests_running,
                requests_waiting=verdict.gauges.requests_waiting,
                kv_cache_usage=verdict.gauges.kv_cache_usage,
                completion_ms=report.completion_ms,
                error=verdict.error,
            )
        checked_at = verdicts[0].checked_at if verdicts else datetime.now(UTC)
        summary = HealthCheckReport(
            checked_at=checked_at, upstreams=reports, completion=completion, pruned=pruned
        )
        await acreate_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=summary.markdown(),
            description="The verdict on every upstream from this health check.",
        )
        down = sum(report.verdict.status == "down" for report in reports)
        log.info("health.checked", upstreams=len(reports), down=down, pruned=pruned)
    return summary
