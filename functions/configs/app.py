"""The configs function: named, versioned LLM configurations (admin keys write)."""

from __future__ import annotations

from typing import Annotated

from litestar import Litestar, Router, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from functions.core.configs import service
from functions.core.configs.schemas import LLMConfigCreate, LLMConfigOut, LLMConfigSpec
from functions.core.keys.schemas import Principal
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import provide_principal, require_admin
from functions.core.web.docs import errors


@post("/", summary="Create a configuration (version 1)", responses=errors(400, 403, 409))
async def create_config(
    data: JSONBody[LLMConfigCreate], principal: NamedDependency[Principal]
) -> LLMConfigOut:
    require_admin(principal)
    return await service.create_config(data)


@get("/", summary="List configurations (latest version of each)")
async def list_configs(
    principal: NamedDependency[Principal],
    include_archived: FromQuery[bool] = False,
) -> list[LLMConfigOut]:
    return await service.list_configs(include_archived=include_archived)


@get("/{name:str}", summary="Get a configuration", responses=errors(404))
async def get_config(
    name: FromPath[str],
    principal: NamedDependency[Principal],
    version: Annotated[int | None, QueryParameter(ge=1, description="An older version")] = None,
) -> LLMConfigOut:
    """The latest version, or the one given by ``?version=``."""
    return await service.get_config(name, version)


@get("/{name:str}/versions", summary="Every version of a configuration", responses=errors(404))
async def list_versions(
    name: FromPath[str], principal: NamedDependency[Principal]
) -> list[LLMConfigOut]:
    return await service.list_versions(name)


@put("/{name:str}", summary="Edit: store a new version", responses=errors(400, 403, 404))
async def update_config(
    name: FromPath[str], data: JSONBody[LLMConfigSpec], principal: NamedDependency[Principal]
) -> LLMConfigOut:
    """Versions are immutable: this stores version N+1; messages keep pointing at theirs."""
    require_admin(principal)
    return await service.update_config(name, data)


@delete("/{name:str}", status_code=200, summary="Archive", responses=errors(403, 404))
async def archive_config(
    name: FromPath[str], principal: NamedDependency[Principal]
) -> LLMConfigOut:
    """Hide from listings and new conversations; old versions stay for stored messages."""
    require_admin(principal)
    return await service.archive_config(name)


router = Router(
    path="/v1/configs",
    route_handlers=[
        create_config,
        list_configs,
        get_config,
        list_versions,
        update_config,
        archive_config,
    ],
    dependencies={"principal": Provide(provide_principal)},
    tags=["configs"],
    security=[{"BearerAuth": []}],
)


def create_app(settings: Settings | None = None) -> Litestar:
    return build_app("configs", [router], settings=settings, uses_llm=False)
