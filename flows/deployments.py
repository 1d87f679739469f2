"""Every flow as a deployment: its schedule, name, description, tags and limits, in one list.

``switchboard flows serve`` registers them on the Prefect server in ``PREFECT_API_URL`` and
runs them from that process (:func:`serve_all`); ``switchboard flows deploy --pool NAME``
registers them for the workers of a work pool instead (:func:`deploy_all`), so they run
wherever a worker pulls them. Either way the deployments are the same.

Each deployment allows one run at a time and cancels a run that would start while the
previous one still runs: one probe per schedule for the whole deployment, and no pile-up
behind a stuck run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prefect import aserve, get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import adeploy
from prefect.exceptions import ObjectNotFound
from prefect.types.entrypoint import EntrypointType

from flows.catalog import interval_s
from flows.evaluate import evaluate
from flows.export_history import EVERY as EXPORT_EVERY
from flows.export_history import export_history
from flows.health_check import health_check
from flows.maintenance import maintenance

if TYPE_CHECKING:
    import uuid

    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

    from functions.core.settings import Settings

DEPLOYMENT = "switchboard"
VERSION = "0.1.0"


PAUSE_WITHIN_S = 10.0


@dataclass(frozen=True)
class ScheduledFlow:
    """A flow and how it is deployed."""

    name: str
    flow: Flow[Any, Any]
    tags: tuple[str, ...]
    setting: str | None  # the Settings field holding the interval, in seconds; None: on demand
    every: timedelta | None = None  # a fixed interval, for a flow with no setting for one

    def interval(self, settings: Settings) -> timedelta | None:
        every_s = None if self.every is None else self.every.total_seconds()
        seconds = interval_s(settings, self.setting, every_s)
        return None if seconds is None else timedelta(seconds=seconds)

    @property
    def description(self) -> str:
        return self.flow.description or ""

    @property
    def deployment_name(self) -> str:
        return f"{self.name}/{DEPLOYMENT}"


SCHEDULED = (
    ScheduledFlow(
        name="health-check",
        flow=health_check,
        tags=("switchboard", "health"),
        setting="health_check_interval_s",
    ),
    ScheduledFlow(
        name="maintenance",
        flow=maintenance,
        tags=("switchboard", "maintenance"),
        setting="maintenance_interval_s",
    ),
    # On demand only: started from the UI (a form of its parameters) or `flows run evaluate`.
    ScheduledFlow(name="evaluate", flow=evaluate, tags=("switchboard", "evaluation"), setting=None),
    ScheduledFlow(
        name="export",
        flow=export_history,
        tags=("switchboard", "export"),
        setting=None,
        every=EXPORT_EVERY,
    ),
)


def by_name(name: str) -> ScheduledFlow:
    for scheduled in SCHEDULED:
        if scheduled.name == name:
            return scheduled
    raise KeyError(name)


async def to_deployments(
    settings: Settings, *, work_pool: str | None = None
) -> list[RunnerDeployment]:
    """The deployments of every flow, with their schedules from ``settings``.

    The entrypoints are module paths (``flows.health_check.health_check``): a worker on
    another machine loads the flow from the installed package, not from a file path.
    """
    return [
        await scheduled.flow.ato_deployment(
            name=DEPLOYMENT,
            interval=scheduled.interval(settings),
            description=scheduled.description,
            tags=list(scheduled.tags),
            version=VERSION,
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=work_pool,
        )
        for scheduled in SCHEDULED
    ]


async def serve_all(settings: Settings) -> None:
    """Register every deployment and run their scheduled runs here until stopped.

    The caller pauses the schedules afterwards (``pause_schedules``), in a loop of its own:
    Prefect's runner ends on SIGTERM with ``sys.exit`` from its signal handler, which
    cancels whatever this loop still had to do, its own pause included.
    """
    await aserve(*await to_deployments(settings), print_starting_message=False)


async def pause_schedules(within_s: float = PAUSE_WITHIN_S) -> None:
    """Pause every served schedule, retrying for a while.

    Prefect's runner tries once on a clean stop, and may be cut short (see ``serve_all``);
    a busy server (its SQLite answers 503 while the scheduler writes) can also refuse that
    one call, and the schedules would then go on piling runs up for a process that is gone.
    """
    deadline = asyncio.get_running_loop().time() + within_s
    async with get_client() as client:
        for scheduled in SCHEDULED:
            while True:
                try:
                    found = await client.read_deployment_by_name(scheduled.deployment_name)
                    if not found.paused:
                        await client.pause_deployment(found.id)
                    break
                except ObjectNotFound:
                    break
                except Exception:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.5)


async def deploy_all(settings: Settings, pool: str) -> list[uuid.UUID]:
    """Register every deployment for the workers of the work pool ``pool``.

    No image is built and no code is pushed: workers run the flows from the installed
    ``switchboard[flows]`` package, with their own ``SWITCHBOARD_*`` settings.
    """
    return await adeploy(
        *await to_deployments(settings, work_pool=pool),
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
