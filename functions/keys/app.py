"""The keys function: create (secret shown once), list, change and revoke API keys (admin
only), and what they used (``GET /v1/usage``, ``functions.keys.usage``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Litestar, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from functions.core.keys import service
from functions.core.keys.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyUpdate,
    KeyLimits,
    Principal,
)
from functions.core.llm.client import LLMClient
from functions.core.schemas import Page, decode_cursor, encode_cursor
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import ADMIN, provide_principal, require_admin
from functions.core.web.docs import Cursor, IdPath, errors
from functions.core.web.policy import SWITCHBOARD
from functions.core.web.state import runtime_of
from functions.keys.usage import router as usage_router


@post("/", summary="Create an API key", responses=errors(403, 409, 413, 415), opt=ADMIN)
async def create_key(
    data: JSONBody[ApiKeyCreate], principal: NamedDependency[Principal]
) -> ApiKeyCreated:
    """Returns the secret once; only its hash is stored. Scopes default to ``["chat"]``."""
    require_admin(principal)
    return await service.create_key(data)


@get("/", summary="List API keys, oldest first", responses=errors(403), opt=ADMIN)
async def list_keys(
    principal: NamedDependency[Principal],
    limit: Annotated[int, QueryParameter(ge=1, le=200, description="Page size")] = 50,
    cursor: Cursor = None,
) -> Page[ApiKeyOut]:
    require_admin(principal)
    # Keys are few (an operator makes each one): paged here over the service's listing.
    keys = sorted(await service.list_keys(), key=lambda key: (key.created_at, key.id))
    if cursor is not None:
        after = decode_cursor(cursor, "keys", tuple[datetime, uuid.UUID])
        keys = [key for key in keys if (key.created_at, key.id) > after]
    page = keys[:limit]
    more = len(keys) > limit
    return Page(
        data=page,
        next_cursor=encode_cursor("keys", page[-1].created_at, page[-1].id) if more else None,
    )


@delete(
    "/{key_id:str}",
    status_code=200,
    summary="Revoke an API key",
    responses=errors(403, 404),
    opt=ADMIN,
)
async def revoke_key(key_id: IdPath, principal: NamedDependency[Principal]) -> ApiKeyOut:
    """Effective at once: the next request with this key gets 401."""
    require_admin(principal)
    return await service.revoke_key(key_id)


@put(
    "/{key_id:str}/limits",
    summary="Set an API key's limits",
    responses=errors(400, 403, 404, 413, 415),
    opt=ADMIN,
)
async def set_key_limits(
    key_id: IdPath,
    data: JSONBody[KeyLimits],
    principal: NamedDependency[Principal],
    state: State,
) -> ApiKeyOut:
    """Replaces every limit of the key: a field left out or null takes the gateway's
    default (``SWITCHBOARD_LIMIT_DEFAULT_*``). This process applies it at once, the others
    within 5 seconds."""
    require_admin(principal)
    updated = await service.set_limits(key_id, data)
    runtime_of(state).limiter.forget(key_id)
    return updated


@patch(
    "/{key_id:str}",
    summary="Change a key's expiry, configurations or models",
    responses=errors(403, 404, 413, 415),
    opt=ADMIN,
)
async def update_key(
    key_id: IdPath, data: JSONBody[ApiKeyUpdate], principal: NamedDependency[Principal]
) -> ApiKeyOut:
    """The fields sent change (``null`` clears one), the others stay; effective at once in
    every serving process."""
    require_admin(principal)
    return await service.update_key(key_id, data)


# Switchboard's own API: its error shape, unknown body fields refused.
router = SWITCHBOARD.router(
    path="/v1/keys",
    route_handlers=[create_key, list_keys, update_key, revoke_key, set_key_limits],
    dependencies={"principal": Provide(provide_principal)},
    tags=["keys"],
    security=[{"BearerAuth": []}],
)


def create_app(settings: Settings | None = None, *, llm: LLMClient | None = None) -> Litestar:
    """``llm``: a client to share (tests, one process serving several apps); unused here."""
    return build_app("keys", [router, usage_router], settings=settings, uses_llm=False, llm=llm)
