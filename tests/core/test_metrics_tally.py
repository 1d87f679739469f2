"""Per-request metrics are tallied in plain Python and added to their series in batches
(``functions.core.metrics.Tally``): the series must end exactly as if every observation had
gone to prometheus_client directly, in one process and in multiprocess mode alike. This also
guards the pin on prometheus-client: a release that renames a histogram child's ``_sum`` or
``_buckets`` fails here."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from functions.core.metrics import LATENCY_BUCKETS, Tally, child

if TYPE_CHECKING:
    from pathlib import Path

# Values on, between, below and beyond the bounds, and zero.
EDGES = [0.0, 0.001, 0.0010001, 0.0025, 0.7, 1.0, 59.99, 60.0, 61.0, 1e9]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(registry: CollectorRegistry) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _same(tallied: Samples, direct: Samples) -> None:
    """Counts and buckets exactly; sums to the last bits (added in another order)."""
    assert tallied.keys() == direct.keys()
    for key, value in direct.items():
        if key[0].endswith("_sum"):
            assert tallied[key] == pytest.approx(value, rel=1e-12)
        else:
            assert tallied[key] == value, key


def test_a_flushed_histogram_equals_one_observed_directly() -> None:
    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    tallied_registry = CollectorRegistry()
    tallied = Histogram(
        "direct_seconds", "d", ["route"], buckets=LATENCY_BUCKETS, registry=tallied_registry
    )
    values = EDGES + [random.uniform(0, 70) for _ in range(500)]
    tally = Tally(tallied.labels("/a"), tuple(tallied.labels("/a")._upper_bounds))
    for index, value in enumerate(values):
        direct.labels("/a").observe(value)
        tally.observe(value)
        if index % 97 == 0:  # flushed now and then, as the server does
            tally.flush()
    tally.flush()
    tally.flush()  # nothing new: adds nothing
    _same(_samples(tallied_registry), _samples(registry))
    assert _samples(registry)[("direct_seconds_count", (("route", "/a"),))] == len(values)


def test_a_flushed_counter_equals_one_counted_directly() -> None:
    registry = CollectorRegistry()
    direct = Counter("sends", "s", ["status"], registry=registry)
    tallied_registry = CollectorRegistry()
    tallied = Counter("sends", "s", ["status"], registry=tallied_registry)
    tally = Tally(tallied.labels("complete"), None)
    for amount in (1, 1, 5, 0, 2.5):
        direct.labels("complete").inc(amount)
        tally.inc(amount)
    tally.flush()
    _same(_samples(tallied_registry), _samples(registry))


def test_child_makes_one_tally_per_label_values() -> None:
    counter = Counter("tally_memo_total", "t", ["kind"], registry=None)
    assert child(counter, "a") is child(counter, "a")
    assert child(counter, "a") is not child(counter, "b")


def test_multiprocess_files_hold_the_flushed_counts(tmp_path: Path) -> None:
    """With several workers each writes its own file; a scrape sums them."""
    script = textwrap.dedent(
        """
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        from functions.core.metrics import HTTP_DURATION, HTTP_REQUESTS, child, flush_tallies
        for value in (0.0005, 0.002, 0.002, 3.0):
            child(HTTP_DURATION, "chat", "POST", "/x").observe(value)
            child(HTTP_REQUESTS, "chat", "POST", "/x", "201").inc()
        flush_tallies()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(done.stdout)
        for sample in family.samples
    }
    route = (("function", "chat"), ("method", "POST"), ("route", "/x"))

    def bucket(bound: str) -> float:
        return scraped[
            (
                "switchboard_http_request_duration_seconds_bucket",
                (*route[:1], ("le", bound), *route[1:]),
            )
        ]

    assert scraped[("switchboard_http_requests_total", (*route, ("status", "201")))] == 4
    assert scraped[("switchboard_http_request_duration_seconds_count", route)] == 4
    assert bucket("0.001") == 1
    assert bucket("0.0025") == 3
    assert bucket("+Inf") == 4
    assert scraped[("switchboard_http_request_duration_seconds_sum", route)] == pytest.approx(
        3.0045
    )
