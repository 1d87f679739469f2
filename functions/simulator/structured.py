"""Structured outputs: a reply that is valid JSON for a schema, or one of the given choices.

vLLM constrains decoding with a grammar; the simulator instead writes, deterministically, one
value the schema accepts. It knows the keywords clients send in practice: ``type`` (one or a
list), ``properties``/``required``, ``items``/``prefixItems``/``minItems``/``maxItems``,
``enum``/``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref``, string lengths and a few
formats, numeric bounds. Anything else gets a plain string, which a schema without such
keywords accepts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

_MAX_DEPTH = 8
_MAX_ITEMS = 8
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407
_MASK64 = (1 << 64) - 1
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "sim@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
}
ANSWER_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


class SchemaError(ValueError):
    """A schema the simulator cannot read (not an object, a ``$ref`` it cannot resolve)."""


class _Writer:
    """Draws values from a 64-bit LCG seeded per reply, so a schema gives the same JSON for the
    same request, and words from the prompt so the JSON looks like an answer to it."""

    def __init__(self, root: dict[str, Any], seed: int, words: Sequence[str]) -> None:
        self._root = root
        self._state = seed & _MASK64
        self._words = words

    def _draw(self) -> int:
        self._state = (self._state * _LCG_MULTIPLIER + _LCG_INCREMENT) & _MASK64
        return self._state >> 33

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            raise SchemaError(f"Only local $ref are supported, got {ref!r}")
        node: Any = self._root
        for part in filter(None, ref[1:].split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or key not in node:
                raise SchemaError(f"Unresolvable $ref {ref!r}")
            node = node[key]
        if not isinstance(node, dict):
            raise SchemaError(f"$ref {ref!r} is not a schema")
        return node

    def value(self, schema: object, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return self._string({})
        if "$ref" in schema:
            return self.value(self._resolve(str(schema["$ref"])), depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._draw() % len(enum)]
        narrowed = _narrow(schema)
        if narrowed is not None:
            return self.value(narrowed, depth + 1)
        return self._typed(_kind(schema), schema, depth)

    def _typed(self, kind: str, schema: dict[str, Any], depth: int) -> Any:
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return bool(self._draw() & 1)
        return None if kind == "null" else self._string(schema)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        out = {name: self.value(sub, depth + 1) for name, sub in properties.items()}
        required = schema.get("required")
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str) and name not in out:
                out[name] = self._string({})
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        low = _int_keyword(schema, "minItems", 1)
        high = _int_keyword(schema, "maxItems", max(low, 1))
        count = max(min(max(low, len(prefix)), high, _MAX_ITEMS), 0)
        items = schema.get("items", {})
        return [
            self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)
        ]

    def _integer(self, schema: dict[str, Any]) -> int:
        low, high = _bounds(schema, integer=True)
        span = int(high - low)
        return int(low) + (self._draw() % (span + 1) if span > 0 else 0)

    def _number(self, schema: dict[str, Any]) -> float:
        low, high = _bounds(schema, integer=False)
        fraction = (self._draw() % 1000) / 1000.0
        return round(low + (high - low) * fraction, 3) if high > low else float(low)

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt]
        words = self._words
        count = 1 + self._draw() % 3
        text = " ".join(words[self._draw() % len(words)] for _ in range(count)) if words else "ok"
        low = _int_keyword(schema, "minLength", 0)
        high = _int_keyword(schema, "maxLength", max(len(text), low))
        if len(text) < low:
            text += "x" * (low - len(text))
        return text[:high]


def _narrow(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The one schema a combinator stands for: ``anyOf``/``oneOf``'s first branch, or
    ``allOf``'s parts merged; None when there is no combinator."""
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return options[0]
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            if isinstance(part, dict):
                merged.update(part)
        return merged
    return None


def _kind(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        named = [t for t in declared if isinstance(t, str)]
        declared = next((t for t in named if t != "null"), named[0] if named else None)
    if isinstance(declared, str):
        return declared
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _int_keyword(schema: dict[str, Any], key: str, default: int) -> int:
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number_keyword(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    """The closed range a number must fall in (exclusive bounds moved inwards)."""
    step = 1 if integer else 0.001
    low = _number_keyword(schema, "minimum")
    if (above := _number_keyword(schema, "exclusiveMinimum")) is not None:
        low = above + step if low is None else max(low, above + step)
    high = _number_keyword(schema, "maximum")
    if (below := _number_keyword(schema, "exclusiveMaximum")) is not None:
        high = below - step if high is None else min(high, below - step)
    if low is None:
        low = 0 if high is None or high >= 0 else high - 100
    if high is None:
        high = low + 100
    if integer:
        low, high = math.ceil(low), math.floor(high)
    return low, max(low, high)


def json_for_schema(schema: object, seed: int, words: Sequence[str]) -> str:
    """One compact JSON text the schema accepts, the same for the same ``seed``."""
    if isinstance(schema, str):
        try:
            schema = msgspec.json.decode(schema)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"The JSON schema is not valid JSON: {exc}") from None
    if isinstance(schema, bool):
        schema = {}
    if not isinstance(schema, dict):
        raise SchemaError("The JSON schema must be an object")
    return msgspec.json.encode(_Writer(schema, seed, words).value(schema)).decode()


def pick_choice(choices: Sequence[str], seed: int) -> str:
    """The choice a ``structured_outputs.choice`` reply gives: one of them, by the seed."""
    return choices[seed % len(choices)]
