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

What a probe means (``ok``, ``degraded``, ``down``) is decided in core, once: a failed
completion is reported as an error of the check, which makes a healthy upstream
``degraded``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows import progress
from flows.run_log import run_log
from functions.core.flow_metrics import report_flow_run
from functions.core.health import service as health
from functions.core.health.schemas import HealthCheckOut
from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import ChatMessage, ChatRequest, UpstreamHealth
from functions.core.runtime import open_runtime
from functions.core.settings import Settings, load_settings

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


class Probed(msgspec.Struct, kw_only=True):
    """What one probe of every upstream found."""

    results: list[UpstreamHealth]
    # Upstream URL -> model -> the model's max_model_len, from its /v1/models.
    max_model_len: dict[str, dict[str, int | None]]


class CompletionProbe(msgspec.Struct, kw_only=True):
    """One upstream's one-token completion: its latency, or why it failed."""

    url: str
    latency_ms: float | None = None
    error: str | None = None


class UpstreamReport(msgspec.Struct, kw_only=True):
    """One upstream's recorded verdict, with what the table does not keep."""

    verdict: HealthCheckOut
    max_model_len: dict[str, int | None]
    completion_ms: float | None


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


def _only(settings: Settings, url: str, **overrides: object) -> Settings:
    """Settings for a client that knows only the upstream ``url``: whatever it does is that
    upstream's doing, never routed elsewhere."""
    return msgspec.structs.replace(settings, llm_urls=(url,), **overrides)


async def _max_model_len(settings: Settings, url: str) -> dict[str, int | None]:
    """Each model the upstream serves, with its ``max_model_len`` (none if unreadable).

    Asked of the upstream alone: the client's merged list keeps one card per model, and
    two upstreams may serve one model with different context lengths.
    """
    async with LLMClient.from_settings(_only(settings, url)) as client:
        try:
            models = await client.list_models()
        except LLMError:  # the probe reports why, upstream by upstream
            return {}
    return {model.id: model.max_model_len for model in models}


@task(
    name="probe-upstreams",
    description="GET /health, /v1/models, /metrics and /version of every upstream, at once.",
    retries=0,
    timeout_seconds=PROBE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def probe_upstreams(settings: Settings, llm: LLMClient) -> Probed:
    """Probe every upstream; an upstream's failure is a result, never an exception."""
    results, served = await asyncio.gather(
        llm.health(), asyncio.gather(*(_max_model_len(settings, url) for url in settings.llm_urls))
    )
    by_url = {result.url: models for result, models in zip(results, served, strict=True)}
    return Probed(results=results, max_model_len=by_url)


async def _one_token(settings: Settings, url: str, model: str, timeout_s: float) -> CompletionProbe:
    # Not retried: what this upstream does is the finding.
    only_this = _only(
        settings,
        url,
        llm_max_retries=0,
        llm_connect_timeout_s=min(settings.llm_connect_timeout_s, timeout_s),
        llm_first_token_timeout_s=timeout_s,
        llm_token_timeout_s=timeout_s,
        llm_total_timeout_s=timeout_s,
    )
    request = ChatRequest(
        messages=[ChatMessage(role="user", content="Say OK.")],
        model=model,
        max_tokens=1,
        temperature=0.0,
    )
    started = time.perf_counter()
    async with LLMClient.from_settings(only_this) as client:
        try:
            await client.collect_chat(request, request_id="switchboard-health-check")
        except LLMError as exc:
            return CompletionProbe(url=url, error=f"completion: {exc.message}")
        except Exception as exc:  # one upstream's oddity must not cost every verdict of the run
            return CompletionProbe(url=url, error=f"completion: {type(exc).__name__}: {exc}")
    return CompletionProbe(url=url, latency_ms=round((time.perf_counter() - started) * 1000, 3))


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
    """Ask each upstream whose ``/health`` answered 200 for one token of its first model."""
    timeout_s = settings.health_check_completion_timeout_s
    asked = [
        _one_token(settings, url, result.models[0], timeout_s)
        for url, result in zip(settings.llm_urls, results, strict=True)
        if result.healthy and result.models
    ]
    return list(await asyncio.gather(*asked))


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


def _with_completions(
    settings: Settings, results: list[UpstreamHealth], completions: list[CompletionProbe]
) -> tuple[list[UpstreamHealth], dict[str, float]]:
    """The probe results with failed completions as errors; the completions' latencies."""
    by_url = {completion.url: completion for completion in completions}
    merged: list[UpstreamHealth] = []
    latencies: dict[str, float] = {}
    for url, result in zip(settings.llm_urls, results, strict=True):
        completion = by_url.get(url)
        if completion is not None and completion.error is not None:
            error = "; ".join(filter(None, [result.error, completion.error]))
            result = msgspec.structs.replace(result, error=error)  # noqa: PLW2901
        elif completion is not None and completion.latency_ms is not None:
            latencies[result.url] = completion.latency_ms
        merged.append(result)
    return merged, latencies


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
    settings = load_settings()
    async with report_flow_run(settings, "health_check"):
        completion = (
            settings.health_check_completion if send_completion is None else send_completion
        )
        retention = settings.health_retention_days if retention_days is None else retention_days
        progress.plan(5 if completion else 4)
        with run_log() as log:
            progress.step("opening the database and the LLM client")
            async with open_runtime(settings) as runtime:
                progress.step(f"probing {len(settings.llm_urls)} upstream(s)")
                probed = await probe_upstreams(settings, runtime.require_llm())
                results = probed.results
                completion_ms: dict[str, float] = {}
                if completion:
                    progress.step("asking each healthy upstream for one token")
                    completions = await probe_completions(settings, results)
                    results, completion_ms = _with_completions(settings, results, completions)
                progress.step("recording the verdicts")
                verdicts = await record_verdicts(results)
                progress.step("pruning old checks")
                pruned = await prune_health_checks(retention)
            reports = [
                UpstreamReport(
                    verdict=verdict,
                    max_model_len=probed.max_model_len.get(verdict.upstream, {}),
                    completion_ms=completion_ms.get(verdict.upstream),
                )
                for verdict in verdicts
            ]
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
