"""Probing the vLLM upstreams: what each one answers, judged and recorded by ``service``.

A checker (the health-check flow, a test, a notebook, an operator's script) asks every
upstream for ``/health``, ``/v1/models`` (with each model's ``max_model_len``, read from
that upstream alone), its ``vllm:*`` load gauges and ``/version`` with
:func:`probe_upstreams`, optionally for one token of a real completion with
:func:`probe_completions` (costs GPU time), folds a failed completion into the probe as an
error of the check with :func:`with_completions` (which makes a healthy upstream
``degraded``), and records the verdicts with ``service.record``. :func:`check` does all of
that in one call. An upstream's failure is a finding, never an exception, and none is
retried: what this upstream does now is what is being asked.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec

from functions.core.health import service
from functions.core.health.schemas import HealthCheckOut
from functions.core.llm.client import LLMClient
from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import ChatMessage, ChatRequest, UpstreamHealth

if TYPE_CHECKING:
    from functions.core.settings import Settings

COMPLETION_REQUEST_ID = "switchboard-health-check"


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


async def probe_upstreams(settings: Settings, llm: LLMClient) -> Probed:
    """Probe every upstream of ``settings`` (through ``llm``) at once."""
    results, served = await asyncio.gather(
        llm.health(), asyncio.gather(*(_max_model_len(settings, url) for url in settings.llm_urls))
    )
    by_url = {result.url: models for result, models in zip(results, served, strict=True)}
    return Probed(results=results, max_model_len=by_url)


async def _one_token(
    settings: Settings, url: str, result: UpstreamHealth, timeout_s: float
) -> CompletionProbe:
    """``url``'s one token of its first model, reported under the probe's own URL."""
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
        model=result.models[0],
        max_tokens=1,
        temperature=0.0,
    )
    started = time.perf_counter()
    async with LLMClient.from_settings(only_this) as client:
        try:
            await client.collect_chat(request, request_id=COMPLETION_REQUEST_ID)
        except LLMError as exc:
            return CompletionProbe(url=result.url, error=f"completion: {exc.message}")
        except Exception as exc:  # one upstream's oddity must not cost every verdict of the run
            error = f"completion: {type(exc).__name__}: {exc}"
            return CompletionProbe(url=result.url, error=error)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    return CompletionProbe(url=result.url, latency_ms=latency_ms)


async def probe_completions(
    settings: Settings, results: list[UpstreamHealth]
) -> list[CompletionProbe]:
    """Ask each upstream whose ``/health`` answered 200 for one token of its first model,
    each giving up after ``SWITCHBOARD_HEALTH_CHECK_COMPLETION_TIMEOUT_S``."""
    timeout_s = settings.health_check_completion_timeout_s
    asked = [
        _one_token(settings, url, result, timeout_s)
        for url, result in zip(settings.llm_urls, results, strict=True)
        if result.healthy and result.models
    ]
    return list(await asyncio.gather(*asked))


def with_completions(
    results: list[UpstreamHealth], completions: list[CompletionProbe]
) -> tuple[list[UpstreamHealth], dict[str, float]]:
    """The probe results with failed completions as errors; the completions' latencies."""
    by_url = {completion.url: completion for completion in completions}
    merged: list[UpstreamHealth] = []
    latencies: dict[str, float] = {}
    for result in results:
        completion = by_url.get(result.url)
        if completion is not None and completion.error is not None:
            error = "; ".join(filter(None, [result.error, completion.error]))
            result = msgspec.structs.replace(result, error=error)  # noqa: PLW2901
        elif completion is not None and completion.latency_ms is not None:
            latencies[result.url] = completion.latency_ms
        merged.append(result)
    return merged, latencies


def reports_of(
    verdicts: list[HealthCheckOut], probed: Probed, completion_ms: dict[str, float]
) -> list[UpstreamReport]:
    """Each recorded verdict with its upstream's context lengths and completion latency."""
    return [
        UpstreamReport(
            verdict=verdict,
            max_model_len=probed.max_model_len.get(verdict.upstream, {}),
            completion_ms=completion_ms.get(verdict.upstream),
        )
        for verdict in verdicts
    ]


async def check(settings: Settings, llm: LLMClient, *, completion: bool) -> list[UpstreamReport]:
    """Probe every upstream (with a one-token completion each if ``completion``) and record
    one verdict each: a checker's one call."""
    probed = await probe_upstreams(settings, llm)
    results = probed.results
    completion_ms: dict[str, float] = {}
    if completion:
        completions = await probe_completions(settings, results)
        results, completion_ms = with_completions(results, completions)
    return reports_of(await service.record(results), probed, completion_ms)
