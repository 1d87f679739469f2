"""Request bodies: decoded once, strictly, straight into the handler's Struct.

Litestar's default decodes JSON to plain objects and then converts them leniently (``"0.5"``
becomes a float, ``"true"`` a bool). Switchboard decodes the raw bytes with msgspec in strict
mode instead, so the server accepts exactly what the OpenAPI document says, and every
failure is one of two errors: ``invalid_json`` (the bytes are not JSON Switchboard reads)
or ``validation_error`` naming the field.

Unknown fields are the router's choice (``functions.core.web.policy``): refused with a 400
naming them, or ignored at any depth (an OpenAI-compatible door: OpenAI's clients send
fields a server may not read). Ignoring costs nothing on a body without them: the body is
decoded as strictly first, and only a body that fails is read again without its unknowns.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, NamedTuple

import msgspec
import msgspec.inspect as shapes
from litestar import Request
from litestar.handlers import BaseRouteHandler

from functions.core.errors import InvalidInputError, InvalidJsonError
from functions.core.schemas import InputValueError
from functions.core.web.policy import UnknownFields, policy_of

_AT = re.compile(r"(?P<problem>.*?) - at `\$(?P<path>[^`]*)`", re.DOTALL)
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


class BodyReading(NamedTuple):
    type: Any  # what the handler's ``data`` parameter asks for (Any when it takes none)
    unknown_fields: UnknownFields  # its router's policy


@cache
def body_reading(route_handler: BaseRouteHandler) -> BodyReading:
    """How a handler's body is read: worked out once per route, not per request."""
    data = route_handler.parsed_fn_signature.parameters.get("data")
    type_ = Any if data is None else data.annotation
    return BodyReading(type_, policy_of(route_handler.opt).unknown_fields)


def _field(prefix: str, rest: str = "") -> str:
    path = prefix.lstrip(".")
    if rest:
        path = f"{path}.{rest}" if path else rest
    return path


def _unreadable(body: bytes, reason: str) -> InvalidJsonError:
    if reason.startswith("Input data was truncated") and _LONE_SURROGATE.search(body):
        reason = "a \\u escape is a lone UTF-16 surrogate, which is not a character"
    elif "invalid character" in reason and not _is_utf8(body):
        reason = "the body is not UTF-8"
    return InvalidJsonError(f"invalid JSON body: {reason}", details={"field": "body"})


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _invalid(exc: msgspec.ValidationError) -> InvalidInputError:
    cause = exc.__cause__
    match = _AT.fullmatch(str(exc))
    problem, path = (match["problem"], match["path"]) if match else (str(exc), "")
    if isinstance(cause, InputValueError):
        field, problem = _field(path, cause.field), cause.problem
        message = f"{field} {problem}"
    elif problem.startswith("Object contains unknown field"):
        name = problem.removeprefix("Object contains unknown field ").strip("`")
        field = _field(path, name)
        problem = "is not a field of this body"
        message = f"unknown field {field!r}: check its spelling against the API reference"
    elif problem.startswith("Object missing required field"):
        name = problem.removeprefix("Object missing required field ").strip("`")
        field, problem = _field(path, name), "is required"
        message = f"{field} is required"
    else:
        field = _field(path) or "body"
        message = f"{field}: {problem}"
    if problem == "Number out of range":
        return InvalidJsonError(
            f"invalid JSON body: the number at {field} is out of range",
            details={"field": field},
        )
    return InvalidInputError(
        f"invalid request: {message}",
        details={
            "field": field,
            "errors": [{"key": field, "message": problem, "source": "body"}],
        },
    )


_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_INTEGRAL_FLOAT = re.compile(r"Expected `int[^`]*`, got `float`")


def _integral_float_at(value: Any, path: str) -> tuple[Any, str | int] | None:
    """The container and key of the value at a msgspec path, if it is an integral float."""
    steps: list[str | int] = []
    position = 0
    for match in _PATH_PART.finditer(path):
        if match.start() != position:
            return None
        position = match.end()
        steps.append(match[1] if match[1] is not None else int(match[2]))
    if not steps or position != len(path):
        return None
    container: Any = value
    try:
        for step in steps[:-1]:
            container = container[step]
        found = container[steps[-1]]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(found, float) and found.is_integer():
        return container, steps[-1]
    return None


def _with_integral_floats(
    body: bytes, type_: Any, exc: msgspec.ValidationError, value: Any = None
) -> Any:
    """JSON has one number type: ``5.0`` is the integer 5 (as JSON Schema says), while
    strict decoding refuses it for an ``int``. Convert exactly those values, nothing else
    (strings stay refused for numbers), and decode again. ``value``: the body already
    decoded to plain objects, if it was."""
    for _ in range(64):
        match = _AT.fullmatch(str(exc))
        if match is None or not _INTEGRAL_FLOAT.fullmatch(match["problem"]):
            raise exc
        if value is None:
            value = msgspec.json.decode(body)
        found = _integral_float_at(value, match["path"])
        if found is None:
            raise exc
        container, key = found
        container[key] = int(container[key])
        try:
            return msgspec.convert(value, type_, strict=True)
        except msgspec.ValidationError as again:
            exc = again
    raise exc


@cache
def _shape(type_: Any) -> shapes.Type:
    return shapes.type_info(type_)


_LISTS = (shapes.ListType, shapes.VarTupleType, shapes.SetType, shapes.FrozenSetType)


def _member_for(value: Any, union: shapes.UnionType) -> shapes.Type | None:
    """The one member of a union a JSON object or array can be read as, if there is one
    (a tagged union's member by its tag)."""
    members = [m.type if isinstance(m, shapes.Metadata) else m for m in union.types]
    if isinstance(value, dict):
        objects = [m for m in members if isinstance(m, shapes.StructType | shapes.DictType)]
        if len(objects) > 1:
            objects = [
                m
                for m in objects
                if isinstance(m, shapes.StructType)
                and m.tag_field is not None
                and value.get(m.tag_field) == m.tag
            ]
        return objects[0] if len(objects) == 1 else None
    if isinstance(value, list):
        arrays = [m for m in members if isinstance(m, (*_LISTS, shapes.TupleType))]
        return arrays[0] if len(arrays) == 1 else None
    return None


def _known_only(value: Any, shape: shapes.Type) -> Any:
    """``value`` (plain decoded JSON) without the object keys ``shape`` does not declare,
    at any depth; everything else as it was, for the strict conversion to judge."""
    if isinstance(shape, shapes.Metadata):
        return _known_only(value, shape.type)
    if isinstance(shape, shapes.UnionType):
        member = _member_for(value, shape)
        return value if member is None else _known_only(value, member)
    if isinstance(value, dict):
        return _known_keys(value, shape)
    if isinstance(value, list):
        if isinstance(shape, _LISTS):
            return [_known_only(item, shape.item_type) for item in value]
        if isinstance(shape, shapes.TupleType) and len(value) == len(shape.item_types):
            return [_known_only(*pair) for pair in zip(value, shape.item_types, strict=True)]
    return value


def _known_keys(value: dict[str, Any], shape: shapes.Type) -> Any:
    if isinstance(shape, shapes.StructType):
        fields = {field.encode_name: field.type for field in shape.fields}
        return {
            key: _known_only(item, fields[key])
            for key, item in value.items()
            if key in fields or key == shape.tag_field
        }
    if isinstance(shape, shapes.DictType):
        return {key: _known_only(item, shape.value_type) for key, item in value.items()}
    return value


def _read_again(
    body: bytes, type_: Any, exc: msgspec.ValidationError, unknown_fields: UnknownFields
) -> Any:
    """A body strict decoding refused, read again where the rules allow it."""
    value: Any = None
    if unknown_fields == "ignore":
        try:
            plain = msgspec.json.decode(body)
        except msgspec.ValidationError:
            # Read as plain JSON, only a number beyond a float's range fails, at a path
            # that names no field (``$[...]``): it may be in a field that would be ignored.
            raise InvalidJsonError(
                "invalid JSON body: a number is out of range", details={"field": "body"}
            ) from None
        value = _known_only(plain, _shape(type_))
        try:
            return msgspec.convert(value, type_, strict=True)
        except msgspec.ValidationError as again:
            exc = again
    return _with_integral_floats(body, type_, exc, value)


def decode_body(body: bytes, type_: Any, unknown_fields: UnknownFields = "forbid") -> Any:
    """``body`` as ``type_``, strictly; raises ``invalid_json`` or ``validation_error``.

    ``unknown_fields``: ``forbid`` (a field ``type_`` does not declare is a 400) or
    ``ignore`` (such fields are dropped, at any depth).
    """
    if not body.strip():
        raise InvalidJsonError(
            "a JSON body is required: this request had none", details={"field": "body"}
        )
    try:
        try:
            return msgspec.json.decode(body, type=type_, strict=True)
        except msgspec.ValidationError as exc:
            return _read_again(body, type_, exc, unknown_fields)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise _unreadable(body, str(exc)) from None
    except RecursionError:
        raise InvalidJsonError(
            "invalid JSON body: nested too deeply", details={"field": "body"}
        ) from None


class SwitchboardRequest(Request[Any, Any, Any]):
    """A request whose JSON body is decoded by :func:`decode_body` into the handler's type,
    as strictly as its router's policy says."""

    async def json(self) -> Any:
        return decode_body(await self.body(), *body_reading(self.route_handler))
