"""What every request passes before its handler reads anything: the one app-wide check.

It runs as the app's ``before_request`` hook, not as a Litestar guard: Litestar hands each
guard a copy of the route handler (about 60 attributes copied per request, for nothing
here), and the hook runs at the same point, before any parameter or body is read.

In order, each cheaper than the next and none reading the body before the key is known:

1. a route that declares bearer security (``security=[{"BearerAuth": []}]``, the same
   declaration the OpenAPI document shows) needs a valid key: 401 otherwise; one marked
   ``opt=ADMIN`` needs an admin key: 403 otherwise;
2. every query parameter must be one the route takes, or of a family of names it reads
   itself (``opt[QUERY_PREFIXES_OPT]``) (a typo is a 400 naming it, never
   silently ignored), and no parameter, in the path or the query, may hold a NUL;
3. a route that takes a body needs one (``invalid_json`` saying so), declared as JSON if
   its type is declared and not compressed (415 otherwise); the body is then decoded
   strictly by ``functions.core.web.body``.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, NamedTuple, get_args

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler

from functions.core.errors import InvalidInputError, InvalidJsonError, UnsupportedMediaTypeError
from functions.core.web.auth import authenticate_connection, require_admin


class QueryParameter(NamedTuple):
    repeats: bool  # a list: given once per value
    integer: bool  # written in digits only (no "1e2", "1.0" or " 1")


@cache
def query_names(
    route_handler: BaseRouteHandler, path_params: frozenset[str]
) -> dict[str, QueryParameter]:
    """The query parameters a handler (and its dependencies) read, by their wire names."""
    model = route_handler.create_kwargs_model(
        path_parameters=dict.fromkeys(path_params)  # type: ignore[arg-type]
    )
    signature = route_handler.parsed_fn_signature.parameters
    known: dict[str, QueryParameter] = {}
    for param in model.expected_query_params:
        field = signature.get(param.field_name)
        kinds = (get_args(field.annotation) or (field.annotation,)) if field else ()
        known[param.field_alias] = QueryParameter(
            repeats=param.is_sequence, integer=any(kind is int for kind in kinds)
        )
    return known


QUERY_PREFIXES_OPT = "query_prefixes"
"""A route's ``opt`` key: a tuple of query name prefixes it reads itself (OpenAI's
``metadata[key]=value`` filters), which are not unknown parameters."""
_DIGITS = re.compile(r"-?[0-9]+\Z")


def _takes_body(route_handler: BaseRouteHandler) -> bool:
    return "data" in route_handler.parsed_fn_signature.parameters


def _nul(where: str, name: str) -> InvalidInputError:
    return InvalidInputError(
        f"{where} parameter {name!r} contains a NUL character (\\u0000)",
        details={"field": name, "source": where},
    )


def check_parameters(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Unknown query parameters and NUL characters in any parameter are a 400."""
    handler = connection.route_handler
    path_params = connection.path_params
    for name, value in path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise _nul("path", name)
    query = connection.query_params
    if not query:
        return
    known = query_names(handler, frozenset(path_params))
    for name in query:
        spec = known.get(name)
        if spec is None and name.startswith(handler.opt.get(QUERY_PREFIXES_OPT, ())):
            # A family of names the route reads itself (``metadata[key]``): checked for
            # NUL only, as every parameter is.
            if any("\x00" in value for value in query.getall(name)):
                raise _nul("query", name)
            continue
        if spec is None:
            takes = ", ".join(sorted(known)) if known else "no query parameters"
            raise InvalidInputError(
                f"unknown query parameter {name!r}: this route takes {takes}",
                details={"field": name, "source": "query", "known": sorted(known)},
            )
        values = query.getall(name)
        if any("\x00" in value for value in values):
            raise _nul("query", name)
        if len(values) > 1 and not spec.repeats:
            raise InvalidInputError(
                f"query parameter {name!r} is given {len(values)} times: give it once",
                details={"field": name, "source": "query"},
            )
        if spec.integer and not all(_DIGITS.match(value) for value in values):
            raise InvalidInputError(
                f"query parameter {name!r} is a whole number written in digits, not {values[0]!r}",
                details={"field": name, "source": "query"},
            )


def check_media_type(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """A body is JSON, sent as it is: another declared type, any content coding, or a
    transfer coding but chunked alone, is a 415 (read as JSON anyway, a form or a
    compressed body would only fail more confusingly). No Content-Type is taken as JSON."""
    headers = connection.headers
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            f"request bodies are read as sent: drop Content-Encoding {encoding!r} and send "
            "the JSON uncompressed",
            details={"header": "content-encoding", "got": encoding},
        )
    # A transfer coding is a content coding too (``gzip, chunked``: the server undoes the
    # chunks, not the gzip); only chunked alone is read.
    transfer = ", ".join(headers.getall("transfer-encoding", []))
    if transfer and transfer.strip().lower() != "chunked":
        raise UnsupportedMediaTypeError(
            f"request bodies are read as sent: Transfer-Encoding {transfer!r} is not read "
            "(only chunked alone is); send the JSON uncompressed",
            details={"header": "transfer-encoding", "got": transfer},
        )
    declared = headers.get("content-type")
    if declared is None:
        return
    media = declared.partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"the body must be JSON, sent with Content-Type: application/json (got {media!r})",
            details={"header": "content-type", "got": media},
        )


async def admit(connection: Request[Any, Any, Any]) -> None:
    """The app-wide ``before_request`` hook: see the module docstring."""
    route_handler = connection.route_handler
    if getattr(route_handler.fn, "__name__", "") == "handle_schema_path_not_found":
        # Litestar answers unknown /schema/* paths with an HTML page; ours are JSON errors.
        raise NotFoundException
    if isinstance(route_handler, HTTPRouteHandler) and route_handler.resolve_security():
        principal = await authenticate_connection(connection)
        if route_handler.opt.get("admin"):
            require_admin(principal)  # a 403 before anything of the request is read
    check_parameters(connection)
    if _takes_body(route_handler):
        check_media_type(connection)
        if not (await connection.body()).strip():
            raise InvalidJsonError(
                "a JSON body is required: this request had none", details={"field": "body"}
            )
