"""Probing without Prefect: any checker calls ``probing.check`` (or its steps) and gets the
verdicts the health-check flow records, on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.health import probing, service
from functions.core.llm.client import LLMClient
from tests.core.health.support import probed
from tests.core.llm.conftest import llm_settings
from tests.support.simulator import SimulatorProcess

MAX_MODEL_LEN = 2048


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, SimulatorProcess]]:
    sims = {
        "healthy": SimulatorProcess("--model", "sim-model", "--max-model-len", str(MAX_MODEL_LEN)),
        "hanging": SimulatorProcess("--model", "sim-model", "--hang-rate", "1"),
        "stopped": SimulatorProcess("--model", "sim-model"),
    }
    try:
        for sim in sims.values():
            sim.start()
        sims["stopped"].stop()  # its port stays known, and nothing answers there
        yield sims
    finally:
        for sim in sims.values():
            sim.close()


async def test_check_probes_records_and_reports_every_upstream(
    db: Engine[Any], upstreams: dict[str, SimulatorProcess]
) -> None:
    urls = {name: sim.base_url for name, sim in upstreams.items()}
    settings = llm_settings(*urls.values(), health_check_completion_timeout_s=1.0)
    async with LLMClient.from_settings(settings) as llm:
        reports = await probing.check(settings, llm, completion=True)

    by_url = {report.verdict.upstream: report for report in reports}
    assert {name: by_url[url].verdict.status for name, url in urls.items()} == {
        "healthy": "ok",
        "hanging": "degraded",  # /health says fine; only the completion tells
        "stopped": "down",
    }
    healthy, hanging, stopped = (by_url[urls[name]] for name in ("healthy", "hanging", "stopped"))
    # Each upstream asked alone: the others serve the same model with another length.
    assert healthy.max_model_len == {"sim-model": MAX_MODEL_LEN}
    assert hanging.max_model_len["sim-model"] != MAX_MODEL_LEN
    assert stopped.max_model_len == {}
    assert healthy.completion_ms is not None
    assert hanging.completion_ms is None
    assert (hanging.verdict.error or "").startswith("completion: ")
    assert stopped.completion_ms is None  # a down upstream is not asked
    assert "/health" in (stopped.verdict.error or "")
    # What was reported is what was recorded, for every serving process to read.
    assert sorted(await service.latest(), key=lambda v: v.upstream) == sorted(
        (report.verdict for report in reports), key=lambda v: v.upstream
    )


async def test_check_without_completion_asks_no_upstream_for_tokens(
    db: Engine[Any], upstreams: dict[str, SimulatorProcess]
) -> None:
    healthy = upstreams["healthy"]
    before = (await healthy.stats_async())["paths"].get("/v1/chat/completions", 0)
    settings = llm_settings(healthy.base_url)
    async with LLMClient.from_settings(settings) as llm:
        (report,) = await probing.check(settings, llm, completion=False)
    assert report.verdict.status == "ok"
    assert report.completion_ms is None
    assert (await healthy.stats_async())["paths"].get("/v1/chat/completions", 0) == before
    assert [v.upstream for v in await service.latest()] == [healthy.base_url]


def test_a_failed_completion_is_an_error_of_the_check_and_keeps_the_probe_error() -> None:
    a, b, c = "http://a:1/v1", "http://b:1/v1", "http://c:1/v1"
    results = [probed(a, error="/metrics: timed out"), probed(b), probed(c)]
    merged, latencies = probing.with_completions(
        results,
        [
            probing.CompletionProbe(url=a, error="completion: timed out"),
            probing.CompletionProbe(url=b, latency_ms=12.5),
        ],
    )
    assert merged[0].error == "/metrics: timed out; completion: timed out"
    assert service.status_of(merged[0]) == "degraded"
    assert merged[1] == results[1]
    assert merged[2] == results[2]  # not asked: as probed
    assert latencies == {b: 12.5}
