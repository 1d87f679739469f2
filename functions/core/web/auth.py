"""Bearer API keys for every ``/v1`` route; scopes checked per handler."""

from __future__ import annotations

from typing import Any

from litestar import Request

from functions.core.errors import AuthenticationError, PermissionDeniedError
from functions.core.keys.schemas import Principal
from functions.core.keys.service import authenticate


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Litestar dependency: the caller's key, or a 401 saying what is wrong with it."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer sb-...'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <api key>'")
    principal = await authenticate(token)
    request.scope["state"]["principal_name"] = principal.name
    return principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedError(
            "this needs an API key with the admin scope",
            details={"required_scope": "admin"},
        )
