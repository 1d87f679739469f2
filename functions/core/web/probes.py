"""``/healthz``, ``/readyz`` and ``/metrics``: the same three routes on every function.

Readiness reports and never steers: it does not call the upstreams nor change routing.
It shows this process's routing state of each upstream and the newest health check it
knows of (the deployment's recorded one, see ``functions.core.health``, or this process's
own probe at start-up when none is recorded yet, or a newer one).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from functions.core.db.engine import current_engine
from functions.core.db.errors import SchemaMissingError, as_database_error
from functions.core.db.migrate import pending_migrations
from functions.core.db.tables import ALL_TABLES
from functions.core.health import service as health
from functions.core.health.schemas import HealthCheckOut
from functions.core.health.watcher import STALE_AFTER_S, HealthWatcher
from functions.core.llm.client import LLMClient
from functions.core.metrics import METRICS_MEDIA_TYPE, render_metrics
from functions.core.web.docs import errors
from functions.core.web.schemas import (
    DatabaseReadiness,
    Liveness,
    LLMReadiness,
    Readiness,
    UpstreamCheck,
    UpstreamReadiness,
)

DATABASE_PROBE_TIMEOUT_S = 2.0
# How long a readiness call may wait for the process's one probe at start-up.
STARTUP_PROBE_WAIT_S = 2.0
# Fails unless every table exists; LIMIT 0 reads no row, so it costs only the planning.
_TABLES = ", ".join(table._meta.tablename for table in ALL_TABLES)
_TABLES_EXIST = f"SELECT 1 FROM {_TABLES} LIMIT 0"  # noqa: S608 - names from the code


@get(
    "/healthz",
    tags=["operations"],
    summary="Liveness: the process is serving",
    responses=errors(public=True),
)
async def healthz() -> Liveness:
    return Liveness()


async def database_readiness() -> DatabaseReadiness:
    engine = current_engine()
    try:
        await asyncio.wait_for(engine.run_ddl(_TABLES_EXIST), DATABASE_PROBE_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        error = as_database_error(exc)
        if isinstance(error, SchemaMissingError):
            return DatabaseReadiness(
                status="not_migrated",
                engine=engine.engine_type,
                error=error.message,
                code="database_not_migrated",
            )
        return DatabaseReadiness(
            status="down",
            engine=engine.engine_type,
            error=str(exc) or type(exc).__name__,
            code="database_unavailable",
        )
    # Every table can exist while a later migration (a column, the claim function) is
    # missing, and then every /v1 call fails: ready means every migration is applied.
    try:
        pending = await asyncio.wait_for(pending_migrations(), DATABASE_PROBE_TIMEOUT_S)
    except Exception as exc:
        return DatabaseReadiness(
            status="down",
            engine=engine.engine_type,
            error=str(exc) or type(exc).__name__,
            code="database_unavailable",
        )
    if pending:
        return DatabaseReadiness(
            status="not_migrated",
            engine=engine.engine_type,
            error=f"{len(pending)} migration(s) not applied ({pending[-1]} is the newest): "
            "run `switchboard db migrate`",
            code="database_not_migrated",
        )
    return DatabaseReadiness(status="ok", engine=engine.engine_type)


async def recorded_checks(database: DatabaseReadiness) -> tuple[list[HealthCheckOut], str | None]:
    """The latest recorded verdicts, or why they cannot be read."""
    if database.status != "ok":
        return [], f"recorded health checks cannot be read: {database.error}"
    try:
        return await asyncio.wait_for(health.latest(), DATABASE_PROBE_TIMEOUT_S), None
    except Exception as exc:
        error = as_database_error(exc)
        return [], f"recorded health checks cannot be read: {error.message if error else exc!r}"


def _check(
    verdict: HealthCheckOut,
    source: Literal["recorded", "startup"],
    now: datetime,
    stale_after: timedelta,
) -> UpstreamCheck:
    return UpstreamCheck(
        source=source,
        status=verdict.status,
        checked_at=verdict.checked_at,
        age_s=round((now - verdict.checked_at).total_seconds(), 3),
        steering=source == "recorded" and verdict.checked_at + stale_after > now,
        latency_ms=verdict.latency_ms,
        is_simulator=verdict.is_simulator,
        error=verdict.error,
    )


def _llm_status(
    upstreams: list[UpstreamReadiness],
) -> Literal["ok", "degraded", "simulated", "down", "unknown"]:
    """``down`` when no upstream is usable (out of rotation, or its newest check said so);
    ``simulated`` when every usable one is the bundled simulator; ``unknown`` when some
    usable one was never checked; ``degraded`` when some are not usable."""

    def usable(upstream: UpstreamReadiness) -> bool:
        check = upstream.last_check
        return upstream.state not in ("down", "ejected") and (
            check is None or check.status != "down"
        )

    available = [u for u in upstreams if usable(u)]
    if not available:
        return "down"
    checks = [u.last_check for u in available]
    if any(check is None for check in checks):
        return "unknown"
    if all(check is not None and check.is_simulator for check in checks):
        return "simulated"
    return "degraded" if len(available) < len(upstreams) else "ok"


async def llm_readiness(
    llm: LLMClient | None,
    watcher: HealthWatcher | None,
    recorded: list[HealthCheckOut],
    checks_error: str | None,
) -> LLMReadiness:
    if llm is None:
        return LLMReadiness(status="not_used")
    startup = await watcher.startup_probe(STARTUP_PROBE_WAIT_S) if watcher is not None else None
    stale_after = watcher.stale_after if watcher is not None else timedelta(seconds=STALE_AFTER_S)
    by_url = {verdict.upstream: verdict for verdict in recorded}
    own = {verdict.upstream: verdict for verdict in startup.verdicts} if startup else {}
    now = datetime.now(UTC)
    upstreams = []
    for stats in llm.stats().upstreams:
        verdict = by_url.get(stats.url)
        source: Literal["recorded", "startup"] = "recorded"
        probed = own.get(stats.url)
        if probed is not None and (verdict is None or probed.checked_at > verdict.checked_at):
            verdict, source = probed, "startup"
        models = stats.models
        if models is None and verdict is not None:
            models = verdict.models
        upstreams.append(
            UpstreamReadiness(
                url=stats.url,
                state=stats.state,
                in_flight=stats.in_flight,
                models=models,
                last_check=_check(verdict, source, now, stale_after) if verdict else None,
            )
        )
    return LLMReadiness(
        status=_llm_status(upstreams), upstreams=upstreams, checks_error=checks_error
    )


@get(
    "/readyz",
    tags=["operations"],
    summary="Readiness: database reachable and migrated; LLM status reported",
    responses={
        503: ResponseSpec(data_container=Readiness, description="Not ready: see `database`"),
        **errors(public=True),
    },
    description=(
        "200 while the database answers and has every Switchboard table (reads work even "
        "with no LLM: `llm.status` is then `down`); 503 when it does not answer "
        "(`database.code` `database_unavailable`) or is not migrated "
        "(`database_not_migrated`). Never calls an upstream: `llm.status` is `ok`, "
        "`degraded` (some upstreams out), `simulated` (only the bundled simulator), `down`, "
        "or `unknown` (not every upstream checked yet), from this process's routing state "
        "and the newest health check of each upstream (`last_check`: the deployment's "
        "recorded check, or this process's own probe at start-up)."
    ),
)
async def readyz(request: Request[Any, Any, State]) -> Response[Readiness]:
    function = request.app.state.get("function", "switchboard")
    runtime = request.app.state.get("runtime")
    llm: LLMClient | None = runtime.llm if runtime is not None else None
    watcher: HealthWatcher | None = runtime.health if runtime is not None else None
    database = await database_readiness()
    recorded, checks_error = await recorded_checks(database) if llm is not None else ([], None)
    llm_state = await llm_readiness(llm, watcher, recorded, checks_error)
    status: Literal["ok", "degraded", "unavailable"]
    if database.status != "ok":
        status = "unavailable"
    elif llm_state.status in ("down", "degraded"):
        status = "degraded"
    else:
        status = "ok"
    body = Readiness(status=status, function=function, database=database, llm=llm_state)
    return Response(body, status_code=503 if status == "unavailable" else 200)


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    media_type=METRICS_MEDIA_TYPE,
    responses=errors(public=True),
)
async def metrics() -> Response[bytes]:
    payload, content_type = render_metrics()
    return Response(payload, media_type=content_type)


PROBE_ROUTES = [healthz, readyz, metrics]
