"""The health-check flow against real simulators: one row per upstream per run.

Four upstreams, one of each kind: healthy, unhealthy (``/health`` answers 503), hanging
(``/health`` answers, every chat hangs) and stopped (nothing listens). Without the
one-token completion a hanging engine passes (its ``/health`` is fine); with it, the
check catches it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from flows.health_check import HealthCheckReport, health_check
from functions.core.health import service as health
from tests.core.health.support import probed
from tests.flows.conftest import run_flow
from tests.support.simulator import SimulatorProcess

MAX_MODEL_LEN = 2048


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, SimulatorProcess]]:
    sims = {
        "healthy": SimulatorProcess("--model", "sim-model", "--max-model-len", str(MAX_MODEL_LEN)),
        "unhealthy": SimulatorProcess("--model", "sim-model", "--unhealthy"),
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


@pytest.fixture
def four_upstreams(
    flows_db: str, flow_env: Callable[..., None], upstreams: dict[str, SimulatorProcess]
) -> dict[str, str]:
    flow_env(
        database_url=flows_db,
        llm_urls=",".join(sim.base_url for sim in upstreams.values()),
        llm_connect_timeout_s=1,
        health_check_completion_timeout_s=1,
        log_format="json",
    )
    return {name: sim.base_url for name, sim in upstreams.items()}


async def test_one_row_per_upstream_healthy_unhealthy_hanging_stopped(
    four_upstreams: dict[str, str],
) -> None:
    ran = await run_flow(health_check)
    report: HealthCheckReport = ran.result
    rows = {row.upstream: row for row in await health.history()}
    assert len(rows) == 4
    assert {name: rows[url].status for name, url in four_upstreams.items()} == {
        "healthy": "ok",
        "unhealthy": "down",
        "hanging": "ok",  # /health says fine: only a completion can tell
        "stopped": "down",
    }
    healthy = rows[four_upstreams["healthy"]]
    assert healthy.models == ["sim-model"]
    assert healthy.is_simulator
    assert healthy.latency_ms is not None
    assert healthy.error is None
    assert healthy.gauges.requests_running == 0
    assert healthy.gauges.kv_cache_usage is not None
    assert "/health" in (rows[four_upstreams["stopped"]].error or "")
    assert rows[four_upstreams["stopped"]].latency_ms is None
    assert rows[four_upstreams["unhealthy"]].latency_ms is not None  # it answered, with 503
    by_url = {upstream.verdict.upstream: upstream for upstream in report.upstreams}
    assert by_url[four_upstreams["healthy"]].max_model_len == {"sim-model": MAX_MODEL_LEN}
    assert by_url[four_upstreams["stopped"]].max_model_len == {}
    # Asked of each upstream alone: the others serve the same model with the default.
    assert by_url[four_upstreams["hanging"]].max_model_len["sim-model"] != MAX_MODEL_LEN
    assert not report.completion
    assert all(upstream.completion_ms is None for upstream in report.upstreams)
    print(f"\nhealth-check flow, in-process: {ran.seconds * 1000:.0f} ms for 4 upstreams")

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[ran.flow_run_id])
            )
        )
    assert [artifact.key for artifact in artifacts] == ["upstream-health"]
    assert "**down**" in str(artifacts[0].data)


async def test_the_one_token_completion_catches_a_hanging_engine(
    four_upstreams: dict[str, str],
) -> None:
    ran = await run_flow(health_check, send_completion=True)
    report: HealthCheckReport = ran.result
    assert report.completion
    rows = {row.upstream: row for row in await health.history()}
    assert len(rows) == 4
    hanging = rows[four_upstreams["hanging"]]
    assert hanging.status == "degraded"  # /health said 200: still routable, reported
    assert hanging.error is not None
    assert hanging.error.startswith("completion: ")
    assert rows[four_upstreams["healthy"]].status == "ok"
    by_url = {upstream.verdict.upstream: upstream for upstream in report.upstreams}
    assert by_url[four_upstreams["healthy"]].completion_ms is not None
    assert by_url[four_upstreams["hanging"]].completion_ms is None
    # Only upstreams whose /health answered 200 were asked.
    assert rows[four_upstreams["unhealthy"]].error is None or "completion" not in (
        rows[four_upstreams["unhealthy"]].error or ""
    )


async def test_each_run_adds_one_row_per_upstream_and_prunes_past_retention(
    four_upstreams: dict[str, str],
) -> None:
    old = datetime.now(UTC) - timedelta(days=3)
    await health.record([probed(four_upstreams["healthy"])], checked_at=old)
    first = await run_flow(health_check)
    assert first.result.pruned == 0  # the default retention is a week
    second = await run_flow(health_check, retention_days=1)
    assert second.result.pruned == 1
    rows = await health.history(limit=100)
    assert len(rows) == 8
    assert min(row.checked_at for row in rows) > old


async def test_logs_reach_prefect_and_structlog_with_the_flow_run_id(
    four_upstreams: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    ran = await run_flow(health_check)
    await APILogHandler.aflush()
    flow_run_id = str(ran.flow_run_id)

    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    verdicts = [line for line in lines if line.get("event") == "health.verdict"]
    assert len(verdicts) == 4
    assert {line["flow_run_id"] for line in verdicts} == {flow_run_id}
    assert {line["flow"] for line in verdicts} == {"health-check"}

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[ran.flow_run_id]))
        )
    messages = [log.message for log in logs]
    assert sum(message.startswith("health.verdict upstream=") for message in messages) == 4
    assert any(message.startswith("health.checked upstreams=4 down=2") for message in messages)
