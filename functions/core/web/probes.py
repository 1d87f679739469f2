"""``/healthz``, ``/readyz`` and ``/metrics``: the same three routes on every function."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from litestar import Request, Response, get
from litestar.datastructures import State

from functions.core.db.engine import current_engine
from functions.core.llm.client import LLMClient
from functions.core.metrics import render_metrics
from functions.core.web.schemas import (
    DatabaseReadiness,
    Liveness,
    LLMReadiness,
    Readiness,
    UpstreamReadiness,
)
from functions.core.web.state import llm_of

DATABASE_PROBE_TIMEOUT_S = 2.0
LLM_PROBE_TIMEOUT_S = 2.0


@get("/healthz", tags=["operations"], summary="Liveness: the process is serving")
async def healthz() -> Liveness:
    return Liveness()


async def database_readiness() -> DatabaseReadiness:
    engine = current_engine()
    try:
        await asyncio.wait_for(engine.run_ddl("SELECT 1"), DATABASE_PROBE_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return DatabaseReadiness(status="down", engine=engine.engine_type, error=str(exc))
    return DatabaseReadiness(status="ok", engine=engine.engine_type)


async def llm_readiness(llm: LLMClient | None) -> LLMReadiness:
    if llm is None:
        return LLMReadiness(status="not_used")
    try:
        health = await asyncio.wait_for(llm.health(), LLM_PROBE_TIMEOUT_S)
    except TimeoutError:
        health = []
    llm.apply_health(health)
    stats = {upstream.url: upstream for upstream in llm.stats().upstreams}
    upstreams = [
        UpstreamReadiness(
            url=item.url,
            state="up" if item.healthy else "down",
            in_flight=stats[item.url].in_flight if item.url in stats else 0,
            models=item.models,
        )
        for item in health
    ]
    healthy = [item for item in health if item.healthy]
    status: Literal["ok", "degraded", "simulated", "down"]
    if not healthy:
        status = "down"
    elif all(item.is_simulator for item in healthy):
        status = "simulated"
    elif len(healthy) < len(health):
        status = "degraded"
    else:
        status = "ok"
    return LLMReadiness(status=status, upstreams=upstreams)


@get(
    "/readyz",
    tags=["operations"],
    summary="Readiness: database reachable; LLM status reported",
    description=(
        "200 while the database answers (reads work even with no LLM: `llm.status` is then "
        "`down`); 503 when the database does not. `llm.status` is `ok`, `degraded` (some "
        "upstreams down), `simulated` (only the bundled simulator answers) or `down`."
    ),
)
async def readyz(request: Request[Any, Any, State]) -> Response[Readiness]:
    function = request.app.state.get("function", "switchboard")
    database, llm = await asyncio.gather(
        database_readiness(), llm_readiness(llm_of(request.app.state))
    )
    status: Literal["ok", "degraded", "unavailable"]
    if database.status == "down":
        status = "unavailable"
    elif llm.status in ("down", "degraded"):
        status = "degraded"
    else:
        status = "ok"
    body = Readiness(status=status, function=function, database=database, llm=llm)
    return Response(body, status_code=503 if status == "unavailable" else 200)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=True)
async def metrics() -> Response[bytes]:
    payload, content_type = render_metrics()
    return Response(payload, media_type=content_type)


PROBE_ROUTES = [healthz, readyz, metrics]
