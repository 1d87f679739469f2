"""What a flow run tells Prometheus: when it last succeeded or failed, how long, how much.

A flow run is a short-lived process (a subprocess of ``switchboard flows serve``, or a
worker's), gone before any scrape could reach it, so each run pushes its numbers to a
Prometheus Pushgateway when it ends, under the group ``{job, flow, result}``:

- ``switchboard_flow_last_run_timestamp_seconds``: when the last run with this result ended;
- ``switchboard_flow_last_run_duration_seconds``: how long that run took;
- ``switchboard_flow_last_run_items{kind}``: what it handled (upstreams checked, rows
  exported, items evaluated; ``kind`` is the flow's own word, a fixed one).

A success and a failure are separate groups, so a failure never hides when the flow last
succeeded (and the reverse): the alert "the last run failed" compares the two timestamps.
Prometheus scrapes the Pushgateway with ``honor_labels`` so ``flow`` and ``result`` stay.
Without ``SWITCHBOARD_METRICS_PUSHGATEWAY_URL`` nothing is pushed, and a push that fails
is logged, never raised: monitoring being down must not fail the work itself.

In a flow::

    async with report_flow_run(settings, "export") as run:
        ...
        run.add("messages", written)
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from functions.core.settings import Settings

JOB = "switchboard_flows"
PUSH_TIMEOUT_S = 5.0
log = get_logger(__name__)


class FlowRun:
    """One run being measured; count what it handled with :meth:`add`."""

    def __init__(self, flow: str) -> None:
        self.flow = flow
        self.items: dict[str, float] = {}

    def add(self, kind: str, count: float = 1) -> None:
        self.items[kind] = self.items.get(kind, 0) + count


def run_registry(run: FlowRun, *, finished_at: float, duration_s: float) -> CollectorRegistry:
    """The metrics one run pushes (the group's ``flow`` and ``result`` are added by the push)."""
    registry = CollectorRegistry()
    Gauge(
        "switchboard_flow_last_run_timestamp_seconds",
        "When the flow's last run with this result ended (Unix time).",
        registry=registry,
    ).set(finished_at)
    Gauge(
        "switchboard_flow_last_run_duration_seconds",
        "How long the flow's last run with this result took.",
        registry=registry,
    ).set(duration_s)
    items = Gauge(
        "switchboard_flow_last_run_items",
        "What the flow's last run with this result handled, by kind.",
        ["kind"],
        registry=registry,
    )
    for kind, count in run.items.items():
        items.labels(kind).set(count)
    return registry


async def push_flow_run(
    pushgateway_url: str | None,
    run: FlowRun,
    *,
    succeeded: bool,
    duration_s: float,
    finished_at: float | None = None,
) -> bool:
    """Push one finished run; returns whether it was pushed (never raises for the push)."""
    if not pushgateway_url:
        return False
    registry = run_registry(
        run, finished_at=time.time() if finished_at is None else finished_at, duration_s=duration_s
    )
    group = {"flow": run.flow, "result": "success" if succeeded else "failure"}
    try:
        await asyncio.to_thread(
            push_to_gateway,
            pushgateway_url,
            job=JOB,
            registry=registry,
            grouping_key=group,
            timeout=PUSH_TIMEOUT_S,
        )
    except Exception as exc:  # urllib's errors, a refused connection, a bad address
        log.warning("flow_metrics.push_failed", flow=run.flow, error=str(exc))
        return False
    return True


@asynccontextmanager
async def report_flow_run(settings: Settings, flow: str) -> AsyncIterator[FlowRun]:
    """Measure the block as one run of ``flow`` and push how it ended.

    The block's exception (a failure, a cancellation) is pushed as a failure and raised
    again unchanged.
    """
    run = FlowRun(flow)
    started = time.monotonic()
    try:
        yield run
    except BaseException:
        await push_flow_run(
            settings.metrics_pushgateway_url,
            run,
            succeeded=False,
            duration_s=time.monotonic() - started,
        )
        raise
    await push_flow_run(
        settings.metrics_pushgateway_url, run, succeeded=True, duration_s=time.monotonic() - started
    )
