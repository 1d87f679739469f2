"""OpenAPI: the document says what the server does.

One plugin (:class:`StructSchemas`, registered by ``functions.core.web.app``) writes the
schemas:

- body and response schemas come from msgspec's own JSON Schema of each Struct, the same
  rules the strict decoder applies: bounds (``top_p``'s exclusive minimum, a
  ``temperature`` of 0), ``format: uuid``, ``additionalProperties: false`` on every body,
  no NUL in any string a caller sends;
- an event stream documents each event (:func:`event_stream`).
- :func:`errors` documents every error status a route can answer, in its router's error
  shape (Switchboard's unless told), and the codes particular to a route (each with an
  example).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIType, Reference, Schema
from litestar.params import PathParameter, QueryParameter

from functions.core.errors import InvalidInputError, SwitchboardError
from functions.core.schemas import Input, Output
from functions.core.web.errors import Problem
from functions.core.web.policy import SWITCHBOARD, RouterPolicy

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

_MEANINGS = {
    400: (
        "validation_error (names the field) / invalid_json (the body is not readable JSON) / "
        "context_length_exceeded: fix the request"
    ),
    401: "unauthorized: missing, malformed, unknown or revoked API key",
    403: "forbidden: the key lacks the admin scope",
    404: "not_found: no such object for this key (another key's objects are not found either)",
    409: "conflict / config_archived / conversation_busy: the object's state prevents this",
    413: "payload_too_large: the body exceeds SWITCHBOARD_MAX_BODY_BYTES",
    415: "unsupported_media_type: the body is not declared as JSON, or is compressed",
    429: (
        "rate_limit_exceeded (retry after `Retry-After`) / insufficient_quota (a token "
        "budget is spent: `x-should-retry: false`): the key's limits refused the request"
    ),
    500: "internal_error: a bug; quote the request_id when reporting it",
    502: "llm_error: vLLM failed or returned an error",
    503: "database_unavailable / llm_unavailable / llm_overloaded: try again shortly",
    504: "llm_timeout: vLLM did not answer in time",
}


_EXAMPLE_CODES = {
    400: ("validation_error", "invalid request: temperature: Expected `float` <= 2.0"),
    401: ("unauthorized", "missing API key: send 'Authorization: Bearer sb-...'"),
    403: ("forbidden", "this needs an API key with the admin scope"),
    404: ("not_found", "conversation 3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10 not found"),
    409: ("conflict", "a configuration named 'support' already exists"),
    413: ("payload_too_large", "the request body is larger than the 1048576-byte limit"),
    415: (
        "unsupported_media_type",
        "the body must be JSON, sent with Content-Type: application/json (got 'text/plain')",
    ),
    429: ("rate_limit_exceeded", "over this key's 60 requests per minute: retry in 2 s"),
    500: ("internal_error", "an internal error occurred; quote the request_id when reporting it"),
    502: ("llm_error", "vLLM at 10.0.0.5:8000 answered 500: EngineCore encountered an issue"),
    503: ("database_unavailable", "the database is unreachable; try again shortly"),
    504: ("llm_timeout", "no first token from 10.0.0.5:8000 within 60.0s"),
}

# Every route: a bad parameter (400), a bug (500).
ALWAYS = (400, 500)
# Every route that needs a key: the key (401), the database behind it (503).
SECURED = (*ALWAYS, 401, 503)


def _example(policy: RouterPolicy, status: int, code: str, message: str) -> Example:
    value = policy.shape(Problem(status, code, message), "9b2f4c1de0a34f7e8c1b2a3d4e5f6a7b")
    return Example(summary=code, value=value)


def errors(
    *statuses: int,
    public: bool = False,
    codes: Mapping[type[SwitchboardError], str] | None = None,
    policy: RouterPolicy = SWITCHBOARD,
) -> dict[int, ResponseSpec]:
    """Response specs for ``statuses`` plus those every route has (:data:`SECURED`, or
    :data:`ALWAYS` for a ``public`` route), all in the error shape of ``policy`` (the
    route's router's).

    ``codes``: errors particular to the route, each with what it tells the caller; each is
    listed, with an example, under its own status (added if not named)."""
    particular: dict[int, list[tuple[str, str]]] = {}
    for error, meaning in (codes or {}).items():
        particular.setdefault(error.status_code, []).append((error.code, meaning))
    specs: dict[int, ResponseSpec] = {}
    for status in sorted({*(ALWAYS if public else SECURED), *statuses, *particular}):
        own = particular.get(status, [])
        listed = "".join(f"\n- `{code}`: {meaning}" for code, meaning in own)
        specs[status] = ResponseSpec(
            data_container=policy.error_schema,
            description=_MEANINGS[status] + (f"\n\nOn this route also:{listed}" if own else ""),
            examples=[
                _example(policy, status, *_EXAMPLE_CODES[status]),
                *(_example(policy, status, *pair) for pair in own),
            ],
        )
    return specs


# Path parameters that are ids: a UUID, or a 400 naming the parameter.
IdPath = Annotated[
    uuid.UUID, PathParameter(description="A UUID, as returned when the object was created")
]


# Every list takes the previous page's ``next_cursor`` back as ``cursor``.
Cursor = Annotated[
    str | None,
    QueryParameter(description="The next_cursor of the previous page, unchanged", max_length=1000),
]


def parse_id(value: str | uuid.UUID, what: str) -> uuid.UUID:
    """A path id as a UUID, or a 400 that says what an id looks like."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError(
            f"{value!r} is not a valid {what} id: ids are UUIDs",
            details={"id": value},
        ) from None


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_SCHEMA_FIELDS = set(Schema.__dataclass_fields__)
_NESTED_MAPS = {"properties"}
_NESTED_ONE = {"items", "additionalProperties", "not", "contentSchema", "propertyNames"}
_NESTED_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}


# Every string a caller sends is refused if it holds a NUL (see ``check_value``).
NO_NUL = "^[^\\u0000]*$"


def _no_nul(schema: Any) -> Any:
    """``schema`` with :data:`NO_NUL` on every string that has no pattern of its own."""
    if isinstance(schema, list):
        return [_no_nul(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _no_nul(value) for key, value in schema.items()}
    if out.get("type") == "string" and "pattern" not in out and "enum" not in out:
        out["pattern"] = NO_NUL
    return out


def _has_ref(value: Any) -> bool:
    if isinstance(value, dict):
        return "$ref" in value or any(_has_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_ref(v) for v in value)
    return False


def _convert(key: str, item: Any) -> Any:
    if key in _NESTED_MAPS:
        return {k: schema_from_json(v) for k, v in item.items()}
    if key in _NESTED_ONE:
        return schema_from_json(item)
    if key in _NESTED_LISTS:
        return [schema_from_json(v) for v in item]
    if key == "type":
        return [OpenAPIType(t) for t in item] if isinstance(item, list) else OpenAPIType(item)
    return item


def schema_from_json(value: dict[str, Any] | bool) -> Schema | Reference | bool:
    """A JSON Schema (as msgspec writes it) as Litestar's OpenAPI ``Schema`` objects."""
    if isinstance(value, bool):
        return value
    if "$ref" in value:
        return Reference(ref=value["$ref"])
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = "schema_not" if key == "not" else _CAMEL.sub("_", key).lower()
        if name in _SCHEMA_FIELDS:
            fields[name] = _convert(key, item)
    return Schema(**fields)


class RawSchema:
    """A response type whose schema is given as JSON Schema: what no Struct describes."""

    json_schema: ClassVar[dict[str, Any]]


def _inline(schema: Any, components: Mapping[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    return {key: _inline(value, components) for key, value in schema.items()}


def event_stream(name: str, events: Mapping[str, Any]) -> type[RawSchema]:
    """The schema of one server-sent event of a stream whose events are ``events`` (event
    name: the Struct its ``data`` holds, as JSON), as OpenAPI 3.1 tools read
    ``text/event-stream`` content: ``{event, data}`` with ``data``'s ``contentSchema``."""
    branches = []
    for event, type_ in events.items():
        (ref,), components = msgspec.json.schema_components([type_], ref_template="{name}")
        branches.append(
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": event},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": _inline(ref, components),
                    },
                },
            }
        )
    return type(name, (RawSchema,), {"json_schema": {"oneOf": branches}})


class StructSchemas(StructSchemaPlugin):
    """Schemas of Switchboard's Structs from msgspec's JSON Schema: what the decoder enforces.

    Litestar's own generator drops bounds equal to zero (``minimum: 0``, ``exclusiveMinimum:
    0``) and never says ``additionalProperties: false``. Litestar still registers each
    component and the components it refers to; this replaces the properties it wrote with
    msgspec's, except properties that refer to other components, whose names are Litestar's.
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(
            (Input, Output, RawSchema)
        )

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        if field_definition.is_subclass_of(RawSchema):
            raw = schema_from_json(field_definition.annotation.json_schema)
            assert isinstance(raw, Schema)
            return raw
        schema = super().to_openapi_schema(field_definition, schema_creator)
        (ref,), components = msgspec.json.schema_components(
            [field_definition.annotation], ref_template="{name}"
        )
        own = components[ref["$ref"]]
        if field_definition.is_subclass_of(Input):
            own = _no_nul(own)
        properties = dict(schema.properties or {})
        for name, prop in own.get("properties", {}).items():
            if not _has_ref(prop):
                properties[name] = schema_from_json(prop)  # type: ignore[assignment]
        schema.properties = properties
        schema.required = sorted(own.get("required", []))
        if own.get("additionalProperties") is False:
            schema.additional_properties = False
        if own.get("description"):
            schema.description = own["description"]
        return schema
