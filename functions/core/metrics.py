"""Prometheus metrics, defined once per process and shared by every function.

Labels are bounded: routes are the route templates (``/v1/conversations/{id}``), never
raw paths; models, configurations and upstreams come from configuration, not from callers
(a model no upstream serves is counted as ``unknown``). No key, conversation or message
id is ever a label (``tests/ops`` checks a scrape after real traffic).

With several workers (``PROMETHEUS_MULTIPROC_DIR`` set, as ``switchboard serve
--workers N`` does) every counter, histogram and gauge goes through the shared files,
including the ones computed from live state (upstream routing, recorded health): each
worker mirrors those into the files every second and at scrape time
(:class:`LiveMirror`), so every scrape, whichever worker answers, sees the sum of all.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics import MetricWrapperBase

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
# Time the gateway itself adds: well under the LLM buckets' first bound.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
# Mean time between two output tokens of one reply.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)

# Limits (functions/core/limits): refusals by which limit refused (a fixed set of names),
# and the shared store's health as each process sees it.
RATE_LIMIT_REFUSALS = Counter(
    "switchboard_rate_limit_refusals_total",
    "Sends refused with a 429 by a limit: requests, tokens, tokens_too_large, concurrent, "
    "config_concurrent, day, month.",
    ["limit"],
)
RATE_LIMIT_STORE_UP = Gauge(
    "switchboard_rate_limit_store_up",
    "1 while the limit store answers; store=redis: 0 while this process enforces its "
    "share of each limit in memory (the lowest over workers); store=memory (no shared "
    "store): always 1.",
    ["store"],
    multiprocess_mode="livemin",
)
RATE_LIMIT_STORE_ERRORS = Counter(
    "switchboard_rate_limit_store_errors_total",
    "Limit checks, refunds and probes the shared store did not answer in time.",
)
RATE_LIMIT_DEGRADED_CHECKS = Counter(
    "switchboard_rate_limit_degraded_checks_total",
    "Limit checks made in memory (each limit divided by the live processes) because the "
    "shared store was down.",
)

# Usage by key (its name when SWITCHBOARD_METRICS_KEY_NAMES lists it, else "other": never
# an id, and no more values than the operator listed) and configuration ("none": a bare
# model). GET /v1/usage has every key; these are for dashboards and alerts.
KEY_REPLIES = Counter(
    "switchboard_key_replies_total",
    "Replies by key (a name listed in SWITCHBOARD_METRICS_KEY_NAMES, else other), "
    "configuration and final status.",
    ["key", "config", "status"],
)
KEY_TOKENS = Counter(
    "switchboard_key_tokens_total",
    "Tokens reported by vLLM by key (as switchboard_key_replies_total), configuration and "
    "kind (prompt or completion).",
    ["key", "config", "kind"],
)

LLM_REQUESTS = Counter(
    "switchboard_llm_requests_total",
    "Replies asked of vLLM, by upstream, model and outcome (complete, failed, cancelled).",
    ["upstream", "model", "outcome"],
)
LLM_ERRORS = Counter(
    "switchboard_llm_errors_total",
    "Replies that failed, by upstream, model and error code (llm_timeout, llm_unavailable, ...).",
    ["upstream", "model", "code"],
)
LLM_TTFT = Histogram(
    "switchboard_llm_time_to_first_token_seconds",
    "Time from sending a request to vLLM to its first token.",
    ["upstream", "model"],
    buckets=LLM_BUCKETS,
)
LLM_DURATION = Histogram(
    "switchboard_llm_request_duration_seconds",
    "Time from sending a request to vLLM to its last token (complete replies).",
    ["upstream", "model"],
    buckets=LLM_BUCKETS,
)
LLM_ITL = Histogram(
    "switchboard_llm_inter_token_latency_seconds",
    "Mean time between output tokens of one complete reply: (duration - TTFT) / "
    "(completion tokens - 1), as vLLM's benchmark computes TPOT.",
    ["upstream", "model"],
    buckets=ITL_BUCKETS,
)
LLM_TOKENS = Counter(
    "switchboard_llm_tokens_total",
    "Tokens reported by vLLM, by model, configuration and kind (prompt or completion).",
    ["model", "config", "kind"],
)
GATEWAY_OVERHEAD = Histogram(
    "switchboard_gateway_overhead_seconds",
    "Time a request that called vLLM spent outside the upstream call (auth, database, "
    "prompt, recording, writing the response): the request's duration minus the LLM's.",
    ["function", "route"],
    buckets=OVERHEAD_BUCKETS,
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


class Tally:
    """One series of a per-request counter or histogram, counted in plain Python.

    A send records about a dozen observations. prometheus_client takes a lock and walks
    the buckets in Python for each (and, with several workers, writes a shared file);
    here an observation is an addition, and a histogram's bucket is found by ``bisect``
    (in C). :func:`flush_tallies` adds what was counted to the real series: before
    every scrape (so a scrape is exact), within :data:`FLUSH_INTERVAL_S` of any request
    (:func:`flush_soon`: so the other workers' files are current for the one that answers
    a scrape), and when an app stops.
    """

    __slots__ = ("_bounds", "_buckets", "_count", "_sum", "_target")

    def __init__(self, target: Any, bounds: tuple[float, ...] | None) -> None:
        self._target = target
        self._bounds = bounds
        self._count = 0.0
        self._sum = 0.0
        # One slot per bucket upper bound (the last is +Inf); a counter has none.
        self._buckets = [0] * len(bounds) if bounds is not None else None

    def inc(self, amount: float = 1.0) -> None:
        """A counter's ``inc`` (``amount`` is never negative: every caller counts)."""
        self._count += amount

    def observe(self, amount: float) -> None:
        """A histogram's ``observe``: the first bucket whose bound is at least ``amount``."""
        self._sum += amount
        self._buckets[bisect_left(self._bounds, amount)] += 1  # type: ignore[index, arg-type]

    def flush(self) -> None:
        target = self._target
        buckets = self._buckets
        if buckets is None:
            if self._count:
                count, self._count = self._count, 0.0
                target.inc(count)
            return
        if not any(buckets):
            return
        total, self._sum = self._sum, 0.0
        self._buckets = [0] * len(buckets)
        # prometheus_client's own parts of a histogram child (see the pin in
        # pyproject.toml): its sum and its per-bucket values, which ``observe`` adds to.
        target._sum.inc(total)
        for index, count in enumerate(buckets):
            if count:
                target._buckets[index].inc(count)


# Tallies of the per-request metrics, by label values: bounded as the labels are (no ids
# in any of them), and never removed. Process-wide on purpose, not a runtime's: they stand
# for series of metrics that are themselves one per process (Prometheus' registry, one
# scrape per process), so two runtimes sharing them count into the series they would
# reach without them.
_tallies: dict[tuple[MetricWrapperBase, tuple[str, ...]], Tally] = {}
FLUSH_INTERVAL_S = 1.0
# The pending flush: its event loop and timer, or None (see :func:`flush_soon`).
_flush_timer: list[tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None] = [None]


def child(metric: MetricWrapperBase, *values: str) -> Tally:
    """The :class:`Tally` of ``metric.labels(*values)``, made once per label values."""
    key = (metric, values)
    found = _tallies.get(key)
    if found is None:
        target = metric.labels(*values)
        bounds = getattr(target, "_upper_bounds", None)
        found = _tallies[key] = Tally(target, tuple(bounds) if bounds is not None else None)
    return found


def flush_tallies() -> None:
    """Add every tally's count to its series (see :class:`Tally`)."""
    for tally in list(_tallies.values()):
        tally.flush()


def flush_soon() -> None:
    """A :func:`flush_tallies` within :data:`FLUSH_INTERVAL_S` (one timer at a time),
    called once per request: a worker's counts reach the shared files within a second of
    its last request, busy or idle after."""
    pending = _flush_timer[0]
    if pending is not None and not pending[0].is_closed() and not pending[1].cancelled():
        return
    loop = asyncio.get_running_loop()
    _flush_timer[0] = (loop, loop.call_later(FLUSH_INTERVAL_S, _timed_flush))


def _timed_flush() -> None:
    _flush_timer[0] = None
    flush_tallies()


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


# How a live gauge from several workers adds up: requests in flight and the workers seeing
# an upstream in each routing state are sums; the others (the last health check's
# numbers, read from the database by every worker alike) are the highest value.
_LIVE_GAUGE_SUMS = frozenset(
    {"switchboard_llm_upstream_in_flight", "switchboard_llm_upstream_state"}
)
MIRROR_INTERVAL_S = 1.0


class LiveMirror:
    """Copies live collectors' metrics into this worker's multiprocess files.

    Metrics computed at scrape time from a process's memory cannot be read by the worker
    that answers a scrape for the others; so every worker writes its own into the shared
    files: gauges as they are (``livesum`` or ``livemax``, dropped when the worker dies),
    counters as increments since the last copy (they keep counting after it dies, as
    counters must).
    """

    def __init__(self) -> None:
        self._metrics: dict[str, MetricWrapperBase] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self._task: asyncio.Task[None] | None = None

    def copy(self, collectors: Iterable[Collector]) -> None:
        for collector in collectors:
            for family in collector.collect():
                for sample in family.samples:
                    self._copy(family, sample.name, sample.labels, sample.value)

    def _copy(self, family: Metric, name: str, labels: dict[str, str], value: float) -> None:
        if family.type == "counter" and not name.endswith("_total"):
            return  # ``_created``: not kept in multiprocess mode
        metric = self._metrics.get(family.name)
        if metric is None:
            metric = self._metrics[family.name] = _mirror_metric(family, list(labels))
        values = tuple(labels.values())
        child: Any = metric.labels(*values) if labels else metric
        if family.type == "counter":
            key = (family.name, values)
            seen = self._counted.get(key, 0.0)
            # A smaller value is a new client in this process (counting from zero again).
            child.inc(value - seen if value >= seen else value)
            self._counted[key] = value
        else:
            child.set(value)

    def start(self, collectors: list[Collector]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(collectors), name="switchboard-metrics-mirror"
            )

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _run(self, collectors: list[Collector]) -> None:
        while True:
            # A collector that fails once must not stop the copies for good; the scrape
            # that copies next raises it where it is seen.
            with contextlib.suppress(Exception):
                self.copy(collectors)
            await asyncio.sleep(MIRROR_INTERVAL_S)


def _mirror_metric(family: Metric, labels: list[str]) -> MetricWrapperBase:
    if family.type == "counter":
        return Counter(family.name, family.documentation, labels, registry=None)
    if family.name in _LIVE_GAUGE_SUMS:
        return Gauge(
            family.name, family.documentation, labels, registry=None, multiprocess_mode="livesum"
        )
    return Gauge(
        family.name, family.documentation, labels, registry=None, multiprocess_mode="livemax"
    )


class LiveCollectors(Collector):
    """Every open runtime's live metrics, as one collector of the process's registry.

    Prometheus' registry is one per process and refuses a second collector of the same
    names, so two runtimes in one process (each with its LLM client and health watcher)
    register here instead: their samples of the same series add up as two workers' do
    (counters and :data:`_LIVE_GAUGE_SUMS` summed, the other gauges the highest).
    """

    def __init__(self) -> None:
        self.collectors: list[CallbackCollector] = []

    def collect(self) -> Iterable[Metric]:
        if len(self.collectors) == 1:
            return self.collectors[0].collect()
        merged: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for collector in self.collectors:
            for family in collector.collect():
                merged.setdefault(family.name, family)
                summed = family.type == "counter" or family.name in _LIVE_GAUGE_SUMS
                series = values.setdefault(family.name, {})
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    seen = series.get(key)
                    if seen is None:
                        series[key] = sample.value
                    elif summed and not sample.name.endswith("_created"):  # a time: not summed
                        series[key] = seen + sample.value
                    else:
                        series[key] = max(seen, sample.value)
        families = []
        for name, first in merged.items():
            family = Metric(name, first.documentation, first.type)
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            families.append(family)
        return families


# Process-wide on purpose: the registry and this process's multiprocess files are one per
# process. Each runtime adds its own collectors and removes them when it closes
# (``open_runtime``), so what they hold is the open runtimes' and nothing outlives one; the
# mirror writes this process's files while any is open.
_live = LiveCollectors()
_mirror = LiveMirror()


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def add_live_collector(collector: CallbackCollector) -> None:
    """Register metrics computed at scrape time.

    With several workers they are also mirrored into the shared files (see
    :class:`LiveMirror`), every second while an event loop runs.
    """
    if not _live.collectors:
        REGISTRY.register(_live)
    _live.collectors.append(collector)
    if _multiprocess_dir():
        with contextlib.suppress(RuntimeError):  # no running loop: copied at scrape time
            _mirror.start([_live])


def remove_live_collector(collector: CallbackCollector) -> None:
    _live.collectors.remove(collector)
    if not _live.collectors:
        REGISTRY.unregister(_live)
        _mirror.stop()


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges of workers that are gone (killed, or replaced by uvicorn)."""
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(os.path.basename(file).rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, under another user
            continue


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for this process, or for all workers in multiprocess mode.

    With several workers, every series is read from the shared files: counters and
    histograms summed over all workers (dead ones included), gauges summed or maxed over
    the live ones. This worker copies its live metrics first, so its own are exact; the
    others' are at most :data:`MIRROR_INTERVAL_S` old.
    """
    flush_tallies()
    path = _multiprocess_dir()
    if path:
        _mirror.copy([_live])
        _forget_dead_workers(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), METRICS_MEDIA_TYPE
    return generate_latest(REGISTRY), METRICS_MEDIA_TYPE
