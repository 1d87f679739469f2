"""The upstreams function: each vLLM upstream's recorded health and its last checks (admin).

The verdicts are the ones the health-check flow records (``functions.core.health``); this
only reads them, with this process's own routing state of each upstream beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from functions.core.health import service as health
from functions.core.health.schemas import HealthCheckOut
from functions.core.health.watcher import STALE_AFTER_S
from functions.core.keys.schemas import Principal
from functions.core.llm.client import LLMClient
from functions.core.llm.schemas import UpstreamState
from functions.core.schemas import Output
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import ADMIN, provide_principal, require_admin
from functions.core.web.docs import errors
from functions.core.web.policy import SWITCHBOARD
from functions.core.web.state import runtime_of


class UpstreamOut(Output, kw_only=True):
    """One upstream: its latest recorded verdict, its last checks, and how this process
    routes to it.

    ``configured``: one of this process's ``SWITCHBOARD_LLM_URLS`` (an upstream checked
    once but no longer configured is still listed while its checks are kept). ``state``:
    this process's routing state (``up``, ``ejected``, ``half_open``, ``down``), None when
    not configured here. ``steering``: the latest verdict is recent enough to steer routing
    in every serving process. ``checks``: the newest first.
    """

    url: str
    configured: bool
    state: UpstreamState | None
    latest: HealthCheckOut | None
    steering: bool
    checks: list[HealthCheckOut]


class UpstreamsOut(Output, kw_only=True):
    data: list[UpstreamOut]


@get(
    "/",
    summary="Upstream health: latest verdicts and recent checks",
    responses=errors(403),
    opt=ADMIN,
)
async def list_upstreams(
    state: State,
    principal: NamedDependency[Principal],
    checks: Annotated[
        int, QueryParameter(ge=1, le=100, description="How many recent checks per upstream")
    ] = 10,
) -> UpstreamsOut:
    """Configured upstreams first, in configuration order, then any other upstream with
    recorded checks. Reads recorded checks only: never calls an upstream."""
    require_admin(principal)
    runtime = runtime_of(state)
    routing = {u.url: u.state for u in runtime.llm.stats().upstreams} if runtime.llm else {}
    latest = {verdict.upstream: verdict for verdict in await health.latest()}
    stale_after = runtime.health.stale_after if runtime.health else timedelta(seconds=STALE_AFTER_S)
    now = datetime.now(UTC)
    upstreams = []
    for url in [*routing, *sorted(set(latest) - set(routing))]:
        verdict = latest.get(url)
        upstreams.append(
            UpstreamOut(
                url=url,
                configured=url in routing,
                state=routing.get(url),
                latest=verdict,
                steering=verdict is not None and verdict.checked_at + stale_after > now,
                # One indexed query per upstream: a deployment has a handful of them.
                checks=await health.history(url, limit=checks) if verdict else [],
            )
        )
    return UpstreamsOut(data=upstreams)


# Switchboard's own API: its error shape, unknown body fields refused.
router = SWITCHBOARD.router(
    path="/v1/upstreams",
    route_handlers=[list_upstreams],
    dependencies={"principal": Provide(provide_principal)},
    tags=["upstreams"],
    security=[{"BearerAuth": []}],
)


def create_app(settings: Settings | None = None, *, llm: LLMClient | None = None) -> Litestar:
    return build_app("upstreams", [router], settings=settings, uses_llm=True, llm=llm)
