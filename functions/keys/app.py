"""The keys function: create (secret shown once), list and revoke API keys (admin only)."""

from __future__ import annotations

from litestar import Litestar, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from functions.core.keys import service
from functions.core.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, Principal
from functions.core.settings import Settings
from functions.core.web.app import build_app
from functions.core.web.auth import provide_principal, require_admin
from functions.core.web.docs import errors, parse_id


@post("/", summary="Create an API key", responses=errors(400, 403))
async def create_key(
    data: JSONBody[ApiKeyCreate], principal: NamedDependency[Principal]
) -> ApiKeyCreated:
    """Returns the secret once; only its hash is stored. Scopes default to ``["chat"]``."""
    require_admin(principal)
    return await service.create_key(data)


@get("/", summary="List API keys", responses=errors(403))
async def list_keys(principal: NamedDependency[Principal]) -> list[ApiKeyOut]:
    require_admin(principal)
    return await service.list_keys()


@delete(
    "/{key_id:str}", status_code=200, summary="Revoke an API key", responses=errors(400, 403, 404)
)
async def revoke_key(key_id: FromPath[str], principal: NamedDependency[Principal]) -> ApiKeyOut:
    """Effective at once: the next request with this key gets 401."""
    require_admin(principal)
    return await service.revoke_key(parse_id(key_id, "API key"))


router = Router(
    path="/v1/keys",
    route_handlers=[create_key, list_keys, revoke_key],
    dependencies={"principal": Provide(provide_principal)},
    tags=["keys"],
    security=[{"BearerAuth": []}],
)


def create_app(settings: Settings | None = None) -> Litestar:
    return build_app("keys", [router], settings=settings, uses_llm=False)
