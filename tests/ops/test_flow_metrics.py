"""Flow runs push their metrics to a real Pushgateway (Debian's), where Prometheus reads them."""

from __future__ import annotations

import time

from functions.core.flow_metrics import FlowRun, push_flow_run, report_flow_run
from functions.core.settings import Settings
from tests.support.pushgateway import FlowSamples, value


def test_a_run_pushes_when_it_last_succeeded_how_long_and_how_much(
    flow_samples: FlowSamples,
) -> None:
    now = time.time()
    last = value(
        flow_samples,
        "switchboard_flow_last_run_timestamp_seconds",
        flow="health-check",
        result="success",
    )
    assert now - 60 < last <= now
    assert (
        value(
            flow_samples, "switchboard_flow_last_run_items", flow="health-check", kind="upstreams"
        )
        == 2
    )
    duration = value(
        flow_samples, "switchboard_flow_last_run_duration_seconds", flow="health-check"
    )
    assert 0 <= duration < 5
    # Prometheus keeps these labels (honor_labels) and Pushgateway's own job label.
    labels = {k for (name, found) in flow_samples for k, _ in found}
    assert labels >= {"flow", "result", "job"}


def test_a_failure_does_not_hide_the_last_success(
    flow_samples: FlowSamples,
) -> None:
    name = "switchboard_flow_last_run_timestamp_seconds"
    success = value(flow_samples, name, flow="export", result="success")
    failure = value(flow_samples, name, flow="export", result="failure")
    assert failure >= success
    assert (
        value(flow_samples, "switchboard_flow_last_run_items", flow="export", result="success")
        == 120
    )
    assert (
        value(flow_samples, "switchboard_flow_last_run_items", flow="export", result="failure") == 7
    )


async def test_no_pushgateway_means_no_push_and_an_unreachable_one_never_fails_the_flow() -> None:
    assert not await push_flow_run(None, FlowRun("export"), succeeded=True, duration_s=1)
    unreachable = "http://127.0.0.1:9"  # discard port: refused
    assert not await push_flow_run(unreachable, FlowRun("export"), succeeded=True, duration_s=1)
    async with report_flow_run(Settings(metrics_pushgateway_url=unreachable), "export") as run:
        run.add("messages")
