"""The configs function: named, versioned LLM configurations (admin keys write)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Litestar, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, PathParameter, QueryParameter

from functions.core.configs import service
from functions.core.configs.schemas import (
    CONFIG_NAME_PATTERN,
    LLMConfigCreate,
    LLMConfigOut,
    LLMConfigPatch,
    LLMConfigSaved,
    LLMConfigSpec,
)
from functions.core.keys.schemas import Principal
from functions.core.llm.client import LLMClient
from functions.core.schemas import Page
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import ADMIN, provide_principal, require_admin
from functions.core.web.docs import Cursor, errors
from functions.core.web.policy import SWITCHBOARD
from functions.core.web.state import runtime_of, settings_of

NamePath = Annotated[
    str,
    PathParameter(
        pattern=CONFIG_NAME_PATTERN,
        max_length=100,
        description="A configuration's name",
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size")]


@post(
    "/",
    summary="Create a configuration (version 1)",
    responses=errors(403, 409, 413, 415),
    opt=ADMIN,
)
async def create_config(
    data: JSONBody[LLMConfigCreate], principal: NamedDependency[Principal], state: State
) -> LLMConfigSaved:
    """A name in use is a 409, archived or not (an archived one says how to unarchive it).
    A model no upstream serves is stored all the same, with a note in ``warnings``."""
    require_admin(principal)
    return await _saved(state, await service.create_config(data))


async def _saved(state: State, config: LLMConfigOut) -> LLMConfigSaved:
    warnings = await service.model_warnings(config, runtime_of(state).llm)
    return LLMConfigSaved(**msgspec.structs.asdict(config), warnings=warnings)


@get("/", summary="List configurations (latest version of each)", responses=errors())
async def list_configs(
    principal: NamedDependency[Principal],
    state: State,
    include_archived: Annotated[
        bool, QueryParameter(description="Archived configurations too")
    ] = False,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[LLMConfigOut]:
    """At most ``limit`` and about SWITCHBOARD_MAX_PAGE_BYTES of them (at least one)."""
    return await service.page_configs(
        include_archived=include_archived,
        limit=limit,
        cursor=cursor,
        max_bytes=settings_of(state).max_page_bytes,
    )


@get("/{name:str}", summary="Get a configuration", responses=errors(404))
async def get_config(
    name: NamePath,
    principal: NamedDependency[Principal],
    version: Annotated[
        int | None, QueryParameter(ge=1, le=2**31 - 1, description="An older version")
    ] = None,
) -> LLMConfigOut:
    """The latest version (archived or not), or the one given by ``?version=``."""
    return await service.get_config(name, version)


@get("/{name:str}/versions", summary="Every version of a configuration", responses=errors(404))
async def list_versions(
    name: NamePath,
    principal: NamedDependency[Principal],
    state: State,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[LLMConfigOut]:
    """Oldest first; an archived configuration's versions stay readable. At most ``limit``
    and about SWITCHBOARD_MAX_PAGE_BYTES of them (at least one)."""
    return await service.page_versions(
        name, limit=limit, cursor=cursor, max_bytes=settings_of(state).max_page_bytes
    )


@put(
    "/{name:str}",
    summary="Replace: store a new version from a whole definition",
    responses=errors(403, 404, 409, 413, 415),
    opt=ADMIN,
)
async def update_config(
    name: NamePath,
    data: JSONBody[LLMConfigSpec],
    principal: NamedDependency[Principal],
    state: State,
) -> LLMConfigSaved:
    """Stores version N+1 from the whole body: a field left out takes its default (to
    change some fields and keep the rest, use PATCH). Messages keep pointing at theirs.
    An archived name is a 409: unarchive it first. ``warnings`` as for a create."""
    require_admin(principal)
    return await _saved(state, await service.update_config(name, data))


@patch(
    "/{name:str}",
    summary="Edit: store a new version with some fields changed",
    responses=errors(403, 404, 409, 413, 415),
    opt=ADMIN,
)
async def patch_config(
    name: NamePath,
    data: JSONBody[LLMConfigPatch],
    principal: NamedDependency[Principal],
    state: State,
) -> LLMConfigSaved:
    """Stores version N+1: the latest version with the fields in the body changed (`null`
    clears one that may be empty). An archived name is a 409: unarchive it first.
    ``warnings`` as for a create."""
    require_admin(principal)
    return await _saved(state, await service.patch_config(name, data))


@delete("/{name:str}", status_code=200, summary="Archive", responses=errors(403, 404), opt=ADMIN)
async def archive_config(name: NamePath, principal: NamedDependency[Principal]) -> LLMConfigOut:
    """Hide from listings and new conversations; every version stays readable for the
    messages that used it. Idempotent; ``POST /v1/configs/{name}/unarchive`` undoes it."""
    require_admin(principal)
    return await service.archive_config(name)


@post(
    "/{name:str}/unarchive",
    status_code=200,
    summary="Unarchive",
    responses=errors(403, 404),
    opt=ADMIN,
)
async def unarchive_config(name: NamePath, principal: NamedDependency[Principal]) -> LLMConfigOut:
    """Bring an archived configuration back as it was (not as the default). Idempotent."""
    require_admin(principal)
    return await service.unarchive_config(name)


# Switchboard's own API: its error shape, unknown body fields refused.
router = SWITCHBOARD.router(
    path="/v1/configs",
    route_handlers=[
        create_config,
        list_configs,
        get_config,
        list_versions,
        update_config,
        patch_config,
        archive_config,
        unarchive_config,
    ],
    dependencies={"principal": Provide(provide_principal)},
    tags=["configs"],
    security=[{"BearerAuth": []}],
)


def create_app(settings: Settings | None = None, *, llm: LLMClient | None = None) -> Litestar:
    """``llm``: a client to share (tests, one process serving several apps); it tells
    whether a configuration's model is served (a warning when it is not)."""
    return build_app("configs", [router], settings=settings, uses_llm=True, llm=llm)
