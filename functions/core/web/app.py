"""The one place a Switchboard Litestar app is assembled.

Every function's ``create_app`` and the all-in-one gateway call :func:`build_app` with
their route handlers, so they share error handling, request context, probes, OpenAPI and
the lifespan that owns the database pool and the LLM client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler

from functions.core.db.engine import describe_url
from functions.core.llm.client import LLMClient
from functions.core.logging import get_logger
from functions.core.metrics import flush_tallies
from functions.core.runtime import open_runtime
from functions.core.settings import Settings, load_settings
from functions.core.web.admission import admit
from functions.core.web.body import SwitchboardRequest
from functions.core.web.context import OnRuntime, RequestContext
from functions.core.web.docs import StructSchemas
from functions.core.web.offline_docs import assets_router, render_plugins
from functions.core.web.policy import SWITCHBOARD, PolicyByPath
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
            '`{"error": {"code", "message", "request_id", "details"}}`. Types are strict: '
            'a number or boolean sent as a string (`"temperature": "0.5"`) is a 400, as is '
            "an unknown field or query parameter. Lists are "
            '`{"data": [...], "next_cursor": ...}`: pass `next_cursor` back as `cursor`.'
        ),
        path="/schema",
        render_plugins=render_plugins(),  # every asset served by the app: works offline
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

    Each router brings its own policy (error shape, body strictness), set where it is
    built with ``functions.core.web.policy``; Switchboard's applies to the rest.

    The lifespan opens the runtime (``functions.core.runtime``): the database, the LLM
    client when ``uses_llm`` (``llm`` shares one the caller owns: tests, the gateway) and
    the services, and puts it on ``app.state.runtime``.
    """
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_runtime(settings, llm=llm, use_llm=uses_llm, serving=True) as runtime:
            app.state.runtime = on_runtime.runtime = runtime
            log.info(
                "function.started",
                function=function,
                database=describe_url(settings.database_url),
                llm_urls=list(settings.llm_urls) if uses_llm else [],
            )
            try:
                yield
            finally:
                on_runtime.runtime = None
                # What the last requests counted reaches the series (with several
                # workers, this worker's file) before the process goes.
                flush_tallies()

    app = Litestar(
        route_handlers=[*route_handlers, *PROBE_ROUTES, assets_router()],
        # Each router writes its own errors (functions.core.web.policy); this writes the
        # rest (no route, the probes) in the shape of the router the path belongs to.
        exception_handlers=PolicyByPath(route_handlers, SWITCHBOARD).exception_handlers,
        # Authentication, parameter checks and a strict body, before any handler reads.
        before_request=admit,
        request_class=SwitchboardRequest,
        plugins=[StructSchemas()],
        lifespan=[lifespan],
        openapi_config=openapi_config(f"Switchboard {function}"),
        request_max_body_size=settings.max_body_bytes,
        state=State({"function": function, "settings": settings}),
        logging_config=None,
        debug=False,
    )
    # Wrap the whole handler (not a Litestar middleware, which skips unmatched routes).
    on_runtime = OnRuntime(
        RequestContext(app.asgi_handler, function, key_names=frozenset(settings.metrics_key_names))
    )
    app.asgi_handler = on_runtime  # type: ignore[assignment]
    return app
