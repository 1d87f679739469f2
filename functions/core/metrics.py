"""Prometheus metrics, defined once per process and shared by every function.

Labels are bounded: routes are the route templates (``/v1/conversations/{id}``), never
raw paths; models and upstreams come from configuration, not from callers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.core import Metric

    from functions.core.llm.schemas import LLMStats

# The exposition format's media type without its charset: the web layer adds
# ``charset=utf-8`` itself, and a second one makes some scrapers refuse the page.
METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.split(";charset=")[0].split("; charset=")[0]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LLM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "switchboard_http_requests_total",
    "HTTP requests handled, by function, method, route template and status.",
    ["function", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "switchboard_http_request_duration_seconds",
    "Time from request start to the last byte of the response.",
    ["function", "method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "switchboard_http_requests_in_flight",
    "Requests being handled right now.",
    ["function"],
    multiprocess_mode="livesum",
)
LLM_REQUESTS = Counter(
    "switchboard_llm_requests_total",
    "Calls to vLLM by model and outcome (ok or an error code).",
    ["model", "outcome"],
)
LLM_TTFT = Histogram(
    "switchboard_llm_time_to_first_token_seconds",
    "Time from sending a request to vLLM to its first token.",
    ["model"],
    buckets=LLM_BUCKETS,
)
LLM_DURATION = Histogram(
    "switchboard_llm_request_duration_seconds",
    "Time from sending a request to vLLM to its last token.",
    ["model"],
    buckets=LLM_BUCKETS,
)
LLM_TOKENS = Counter(
    "switchboard_llm_tokens_total",
    "Tokens reported by vLLM, by model and kind (prompt or completion).",
    ["model", "kind"],
)
CHAT_MESSAGES = Counter(
    "switchboard_chat_replies_total",
    "Assistant replies stored, by final status (complete, failed, cancelled).",
    ["status"],
)


class CallbackCollector(Collector):
    """Metrics read at scrape time from a callback (e.g. the LLM client's upstream stats)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())


_UPSTREAM_STATES = ("up", "half_open", "ejected", "down")


def upstream_metrics(stats: LLMStats) -> Iterable[Metric]:
    """The LLM client's view of each vLLM upstream, as Prometheus metrics."""
    labels = ["upstream"]
    in_flight = GaugeMetricFamily(
        "switchboard_llm_upstream_in_flight", "Requests in flight to the upstream.", labels=labels
    )
    state = GaugeMetricFamily(
        "switchboard_llm_upstream_state",
        "1 for the upstream's current routing state (up, half_open, ejected, down).",
        labels=[*labels, "state"],
    )
    waiting = GaugeMetricFamily(
        "switchboard_llm_upstream_waiting",
        "vLLM's num_requests_waiting at the last health check.",
        labels=labels,
    )
    requests = CounterMetricFamily(
        "switchboard_llm_upstream_requests", "Requests routed to the upstream.", labels=labels
    )
    failures = CounterMetricFamily(
        "switchboard_llm_upstream_connect_failures",
        "Connections to the upstream that failed.",
        labels=labels,
    )
    ejections = CounterMetricFamily(
        "switchboard_llm_upstream_ejections", "Times the upstream was ejected.", labels=labels
    )
    for upstream in stats.upstreams:
        in_flight.add_metric([upstream.url], upstream.in_flight)
        for name in _UPSTREAM_STATES:
            state.add_metric([upstream.url, name], 1.0 if upstream.state == name else 0.0)
        if upstream.queue_depth is not None:
            waiting.add_metric([upstream.url], upstream.queue_depth)
        requests.add_metric([upstream.url], upstream.requests_total)
        failures.add_metric([upstream.url], upstream.connect_failures_total)
        ejections.add_metric([upstream.url], upstream.ejections_total)
    overloaded = CounterMetricFamily(
        "switchboard_llm_overloaded", "Requests refused because every upstream was at its cap."
    )
    overloaded.add_metric([], stats.overloaded_total)
    retries = CounterMetricFamily(
        "switchboard_llm_retries", "Requests sent again after a retry-safe failure."
    )
    retries.add_metric([], stats.retries_total)
    return [in_flight, state, waiting, requests, failures, ejections, overloaded, retries]


_live_collectors: list[CallbackCollector] = []


def add_live_collector(collector: CallbackCollector) -> None:
    """Register metrics computed at scrape time (they cannot go through multiprocess files)."""
    REGISTRY.register(collector)
    _live_collectors.append(collector)


def remove_live_collector(collector: CallbackCollector) -> None:
    REGISTRY.unregister(collector)
    _live_collectors.remove(collector)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for this process, or for all workers in multiprocess mode.

    With several workers, counters and histograms are summed over all of them; the live
    gauges (upstream state, in flight) are those of the worker that answers the scrape.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in _live_collectors:
            registry.register(collector)
        return generate_latest(registry), METRICS_MEDIA_TYPE
    return generate_latest(REGISTRY), METRICS_MEDIA_TYPE
