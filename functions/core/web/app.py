"""The one place a Switchboard Litestar app is assembled.

Every function's ``create_app`` and the all-in-one gateway call :func:`build_app` with
their route handlers, so they share error handling, request context, probes, OpenAPI and
the lifespan that owns the database pool and the LLM client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.engine import (
    close_pool,
    describe_url,
    engine_from_url,
    open_pool,
    use_engine,
)
from functions.core.db.errors import as_database_error
from functions.core.keys.cache import principals
from functions.core.keys.revocations import RevocationListener
from functions.core.llm.client import LLMClient
from functions.core.logging import configure_logging, get_logger
from functions.core.metrics import (
    CallbackCollector,
    add_live_collector,
    remove_live_collector,
    upstream_metrics,
)
from functions.core.settings import Settings, load_settings
from functions.core.web.context import RequestContext
from functions.core.web.errors import EXCEPTION_HANDLERS
from functions.core.web.probes import PROBE_ROUTES

log = get_logger(__name__)
VERSION = "0.1.0"


def openapi_config(title: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=VERSION,
        description=(
            "Switchboard: a self-hosted LLM chat gateway for vLLM. Authenticate with "
            "`Authorization: Bearer sb-...`. Errors are always "
            '`{"error": {"code", "message", "request_id", "details"}}`.'
        ),
        path="/schema",
        render_plugins=[SwaggerRenderPlugin(path="/swagger"), ScalarRenderPlugin(path="/")],
        components=Components(
            security_schemes={
                "BearerAuth": SecurityScheme(
                    type="http", scheme="bearer", description="A Switchboard API key (sb-...)"
                )
            }
        ),
        use_handler_docstrings=True,
    )


def build_app(
    function: str,
    route_handlers: Sequence[ControllerRouterHandler],
    *,
    settings: Settings | None = None,
    uses_llm: bool = True,
    llm: LLMClient | None = None,
) -> Litestar:
    """Assemble a function app: its routes plus probes, errors, context and lifespan.

    ``llm`` lets a caller share one client between apps (tests, the gateway); otherwise
    the lifespan builds one from the settings when ``uses_llm``.
    """
    settings = settings or load_settings()
    configure_logging(settings.resolved_log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = engine_from_url(settings.database_url)
        use_engine(engine)
        listener = _start_auth_cache(engine, settings)
        pool_retry = None
        if not await _open_pool_or_report(engine, settings):
            # Start anyway: probes report the outage, requests get 503 (each query tries a
            # connection of its own) and the pool is opened once the database is back.
            pool_retry = asyncio.create_task(_keep_opening_pool(engine, settings))
        owned_llm = None
        if uses_llm and llm is None:
            owned_llm = LLMClient.from_settings(settings)
        app.state.llm = llm or owned_llm
        collector = None
        if app.state.llm is not None:
            client = app.state.llm
            collector = CallbackCollector(lambda: upstream_metrics(client.stats()))
            add_live_collector(collector)
        log.info(
            "function.started",
            function=function,
            database=describe_url(settings.database_url),
            llm_urls=list(settings.llm_urls) if uses_llm else [],
        )
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            if pool_retry is not None:
                pool_retry.cancel()
            if collector is not None:
                remove_live_collector(collector)
            if owned_llm is not None:
                await owned_llm.aclose()
            await close_pool(engine)

    app = Litestar(
        route_handlers=[*route_handlers, *PROBE_ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=openapi_config(f"Switchboard {function}"),
        request_max_body_size=settings.max_body_bytes,
        state=State({"function": function, "settings": settings, "llm": llm}),
        logging_config=None,
        debug=False,
    )
    # Wrap the whole handler (not a Litestar middleware, which skips unmatched routes).
    app.asgi_handler = RequestContext(app.asgi_handler, function)  # type: ignore[assignment]
    return app


POOL_RETRY_S = 5.0


def _start_auth_cache(engine: Engine[Any], settings: Settings) -> RevocationListener | None:
    """Cache authenticated keys; on PostgreSQL only while revocations can be heard."""
    if settings.auth_cache_ttl_s <= 0:
        principals.disable()
        return None
    if not isinstance(engine, PostgresEngine):
        principals.enable(settings.auth_cache_ttl_s)
        return None
    listener = RevocationListener(settings.database_url, principals, settings.auth_cache_ttl_s)
    listener.start()
    return listener


async def _open_pool_or_report(engine: Engine[Any], settings: Settings) -> bool:
    try:
        await open_pool(
            engine, min_size=settings.database_pool_min, max_size=settings.database_pool_max
        )
    except Exception as exc:
        if as_database_error(exc) is None:
            raise
        log.error("database.unavailable", url=describe_url(settings.database_url), error=str(exc))
        return False
    return True


async def _keep_opening_pool(engine: Engine[Any], settings: Settings) -> None:
    while True:
        await asyncio.sleep(POOL_RETRY_S)
        if await _open_pool_or_report(engine, settings):
            log.info("database.pool_opened", url=describe_url(settings.database_url))
            return


def settings_of(state: State) -> Settings:
    settings: Settings = state["settings"]
    return settings


def llm_of(state: State) -> LLMClient:
    client: Any = state.get("llm")
    if client is None:
        raise RuntimeError("this function was built without an LLM client")
    assert isinstance(client, LLMClient)
    return client
