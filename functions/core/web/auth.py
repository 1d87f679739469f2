"""Bearer API keys for every secured route; scopes checked per handler.

The key is checked by the admission check (``functions.core.web.admission``), before the
body is read or any parameter is parsed, so an unauthenticated request costs a header
check and, at most, one indexed lookup. Handlers receive the result as ``principal``.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from functions.core.errors import AuthenticationError, PermissionDeniedError
from functions.core.keys.schemas import Principal
from functions.core.keys.service import PREFIX_LENGTH, authenticate

_PRINCIPAL = "principal"
# A route handler's ``opt`` for routes only an admin key may use: the admission check
# refuses other keys before the body is read (the handler's require_admin stays, for a
# route mounted without that check).
ADMIN: dict[str, bool] = {"admin": True}


async def authenticate_connection(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller's key, or a 401 saying what is wrong with it; kept on the request."""
    headers = connection.headers.getall("authorization", [])
    if not headers or not headers[0]:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer sb-...'")
    if len(headers) > 1:  # which one would count is anybody's guess: neither does
        raise AuthenticationError("send one Authorization header, not several")
    header = headers[0]
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <api key>'")
    principal = await authenticate(token)
    state = connection.scope["state"]
    state[_PRINCIPAL] = principal
    state["principal_name"] = principal.name
    state["key_prefix"] = token[:PREFIX_LENGTH]  # for the log line: never more of the key
    return principal


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Litestar dependency: the key the admission check authenticated."""
    principal = request.scope["state"].get(_PRINCIPAL)
    if isinstance(principal, Principal):
        return principal
    # A route mounted without the check still never runs unauthenticated.
    return await authenticate_connection(request)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedError(
            "this needs an API key with the admin scope",
            details={"required_scope": "admin"},
        )
