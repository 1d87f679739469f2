"""Active health probe of one upstream: ``/health``, ``/metrics``, ``/version`` (and models).

A probe never raises for an upstream's failure; it reports it in :class:`UpstreamHealth`,
so one dead server cannot hide the state of the others.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import UpstreamHealth

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from functions.core.llm.upstreams import Upstream
    from functions.core.llm.wire import ModelCard

# The simulator names itself in /version so a dashboard can tell it from a real vLLM.
SIMULATOR_MARKER = "switchboard-sim"

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
# vLLM renamed the KV-cache gauge in v0.11 and dropped the old name in v0.12.
_KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


class Gauges(msgspec.Struct, frozen=True):
    """The load gauges of one ``/metrics`` page; None when the page did not carry one."""

    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None


def parse_gauges(text: str) -> Gauges:
    """Sum the request gauges over engines and take the fullest engine's KV cache."""
    sums: dict[str, float] = {}
    kv: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (_RUNNING, _WAITING):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
            elif sample.name in _KV_CACHE:
                kv = sample.value if kv is None else max(kv, sample.value)
    return Gauges(running=sums.get(_RUNNING), waiting=sums.get(_WAITING), kv_cache_usage=kv)


def is_simulator(version_body: Any) -> bool:
    """True when any string in the ``/version`` body names the Switchboard simulator."""
    if isinstance(version_body, str):
        return SIMULATOR_MARKER in version_body.lower()
    if isinstance(version_body, dict):
        return any(is_simulator(v) or is_simulator(k) for k, v in version_body.items())
    if isinstance(version_body, list):
        return any(is_simulator(v) for v in version_body)
    return False


async def _get(http: httpx.AsyncClient, url: str, timeout_s: float) -> httpx.Response | Exception:
    try:
        async with asyncio.timeout(timeout_s):
            return await http.get(url)
    except (httpx.HTTPError, TimeoutError) as exc:
        return exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _version(response: httpx.Response | Exception) -> tuple[str | None, bool]:
    """The version string and whether the body names the simulator."""
    if not isinstance(response, httpx.Response) or response.status_code != 200:
        return None, False
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None, False
    version = body.get("version") if isinstance(body, dict) else None
    return (version if isinstance(version, str) else None), is_simulator(body)


async def probe_upstream(
    http: httpx.AsyncClient,
    upstream: Upstream,
    *,
    timeout_s: float,
    model_list: Awaitable[list[ModelCard] | LLMError],
) -> UpstreamHealth:
    """Probe ``/health``, ``/metrics`` and ``/version`` while ``model_list`` is fetched.

    The probe endpoints need no API key, so none is sent to them; ``model_list`` is the
    client's own (authenticated) model-list fetch.
    """
    started = time.perf_counter()
    health, metrics, version, models = await asyncio.gather(
        _get(http, f"{upstream.root_url}/health", timeout_s),
        _get(http, f"{upstream.root_url}/metrics", timeout_s),
        _get(http, f"{upstream.root_url}/version", timeout_s),
        model_list,
    )
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    errors: list[str] = []
    health_status: int | None = None
    if isinstance(health, httpx.Response):
        health_status = health.status_code
    else:
        errors.append(f"/health: {_describe(health)}")
    if isinstance(models, LLMError):
        errors.append(f"/v1/models: {models.message}")
    gauges = Gauges()
    if isinstance(metrics, httpx.Response) and metrics.status_code == 200:
        try:
            gauges = parse_gauges(metrics.text)
        except ValueError as exc:
            errors.append(f"/metrics: {exc}")
    version_text, simulator = _version(version)
    return UpstreamHealth(
        id=upstream.id,
        url=upstream.url,
        reachable=health_status is not None,
        healthy=health_status == 200,
        health_status=health_status,
        models=[] if isinstance(models, LLMError) else [card.id for card in models],
        num_requests_running=gauges.running,
        num_requests_waiting=gauges.waiting,
        kv_cache_usage_perc=gauges.kv_cache_usage,
        version=version_text,
        is_simulator=simulator,
        latency_ms=latency_ms if health_status is not None else None,
        error="; ".join(errors) or None,
    )
