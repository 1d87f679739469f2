"""Every function mounted in one process: one app, one lifespan, one OpenAPI schema."""

from __future__ import annotations

from litestar import Litestar

from functions.chat.app import router as chat_router
from functions.configs.app import router as configs_router
from functions.core.llm.client import LLMClient
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.keys.app import router as keys_router
from functions.keys.usage import router as usage_router
from functions.openai.app import ROUTERS as OPENAI_ROUTERS
from functions.upstreams.app import router as upstreams_router

ROUTERS = [
    chat_router,
    configs_router,
    keys_router,
    usage_router,
    upstreams_router,
    *OPENAI_ROUTERS,
]


def create_app(settings: Settings | None = None, *, llm: LLMClient | None = None) -> Litestar:
    return build_app("gateway", ROUTERS, settings=settings, uses_llm=True, llm=llm)
