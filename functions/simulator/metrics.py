"""The ``vllm:*`` Prometheus series, kept as plain numbers and rendered by hand.

prometheus_client would cost a lock and a label lookup per observation on the hot path; the
simulator runs on one event loop, so plain attributes are enough and rendering is cheap.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

# vLLM's own bucket bounds (vllm/v1/metrics/loggers.py), so dashboards built on them work here.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
E2E_BUCKETS: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Counts per bucket (not cumulative until rendered), a sum and a count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str, out: list[str]) -> None:
        running = 0
        for bound, hits in zip(self.bounds, self.counts, strict=False):
            running += hits
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}\n')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}\n')
        out.append(f"{name}_sum{{{labels}}} {self.total}\n")
        out.append(f"{name}_count{{{labels}}} {self.count}\n")


class ModelMetrics:
    """Every series for one served model name."""

    __slots__ = (
        "e2e",
        "finished",
        "generation_tokens",
        "labels",
        "prompt_tokens",
        "running",
        "ttft",
        "waiting",
    )

    def __init__(self, model: str) -> None:
        escaped = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        self.labels = f'model_name="{escaped}",engine="0"'
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)


class Metrics:
    """All ``vllm:*`` series, one :class:`ModelMetrics` per served model."""

    def __init__(self, models: Sequence[str], max_num_seqs: int) -> None:
        self._models = tuple(models)
        self._max_num_seqs = max_num_seqs
        self.by_model: dict[str, ModelMetrics] = {m: ModelMetrics(m) for m in self._models}

    def reset(self) -> None:
        """Zero counters and histograms; the live gauges (running, waiting) are kept."""
        for name, old in self.by_model.items():
            fresh = ModelMetrics(name)
            fresh.running, fresh.waiting = old.running, old.waiting
            self.by_model[name] = fresh

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4)."""
        series = self.by_model.values()
        out: list[str] = []

        def gauge(name: str, doc: str, values: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
            out.extend(f"{name}{{{labels}}} {value}\n" for labels, value in values)

        def counter(name: str, doc: str, values: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {doc}\n# TYPE {name} counter\n")
            out.extend(f"{name}_total{{{labels}}} {value}\n" for labels, value in values)

        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            [(m.labels, float(m.running)) for m in series],
        )
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            [(m.labels, float(m.waiting)) for m in series],
        )
        running = sum(m.running for m in series)
        usage = min(1.0, running / self._max_num_seqs) if self._max_num_seqs else 0.0
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            [(m.labels, usage) for m in series],
        )
        counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            [(m.labels, 0.0) for m in series],
        )
        counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            [(m.labels, float(m.prompt_tokens)) for m in series],
        )
        counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            [(m.labels, float(m.generation_tokens)) for m in series],
        )
        counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [
                (f'{m.labels},finished_reason="{reason}"', float(hits))
                for m in series
                for reason, hits in m.finished.items()
            ],
        )
        for attr, name, doc in (
            ("ttft", "vllm:time_to_first_token_seconds", "Histogram of time to first token."),
            ("e2e", "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency."),
        ):
            out.append(f"# HELP {name} {doc}\n# TYPE {name} histogram\n")
            for m in series:
                hist: Histogram = getattr(m, attr)
                hist.render(name, m.labels, out)
        return "".join(out).encode()
