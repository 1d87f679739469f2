"""Base Structs for everything that crosses an edge (HTTP, CLI, flows).

``Input`` carries the policy for what callers send: unknown fields are an error, not
silently dropped, so a typo in a field name is reported instead of ignored; and every value
is one both databases store alike (see :func:`check_value`). ``Output`` is what services
return; every field is always present so clients see a stable shape.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, get_args

import msgspec

from functions.core.errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

# Free-form JSON (metadata, extra) nests at most this deep; deeper is a 400, not a crash in
# a database's JSON parser or a recursion limit.
MAX_JSON_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The end of a name pattern, for Python (msgspec, Litestar) and the OpenAPI document
# (ECMAScript) alike: Python's ``$`` also matches before a final newline, so "name\n"
# would pass; ``\Z`` is Python's true end but no ECMAScript. ``(?!\n)$`` is the end in both.
END = r"(?!\n)$"


class InputValueError(ValueError):
    """A value no database may store; ``field`` is its path within the Struct."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def check_value(value: Any, field: str, depth: int = 0) -> None:
    """Refuse what PostgreSQL and SQLite would not store alike, wherever it is nested.

    NUL (U+0000) in a string or key (PostgreSQL refuses it, SQLite keeps it), an integer
    beyond 64 bits, a float that is not finite, or JSON nested deeper than
    :data:`MAX_JSON_DEPTH`. Nested Structs check themselves (``Input.__post_init__``).
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise InputValueError(field, "contains a NUL character (\\u0000), which is not stored")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InputValueError(field, "is an integer beyond 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InputValueError(field, "is not a finite number")
    elif isinstance(value, dict | list | tuple):
        if depth >= MAX_JSON_DEPTH:
            raise InputValueError(field, f"nests JSON deeper than {MAX_JSON_DEPTH} levels")
        _check_items(value, field, depth + 1)


def _check_items(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...], field: str, depth: int
) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise InputValueError(field, f"has a key with a NUL character (\\u0000): {key!r}")
            check_value(item, f"{field}.{key}", depth)
    else:
        for index, item in enumerate(value):
            check_value(item, f"{field}[{index}]", depth)


# Values check_value always accepts, by exact type.
_SAFE = frozenset({bool, type(None)})


def _check_fields(struct: msgspec.Struct) -> None:
    for name, encoded in zip(
        struct.__struct_fields__, struct.__struct_encode_fields__, strict=True
    ):
        value = getattr(struct, name)
        kind = type(value)
        if kind is str:  # most fields, checked here without a call
            if "\x00" in value:
                check_value(value, encoded)
        elif kind not in _SAFE and not isinstance(value, msgspec.Struct):
            check_value(value, encoded)


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for request bodies and service inputs.

    Checks every field on construction and on decoding (:func:`check_value`), so a value
    the databases would treat differently never reaches a service, whichever door it came
    through.
    """

    def __post_init__(self) -> None:
        _check_fields(self)


class FrozenInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """:class:`Input`, immutable: for what is read once and then passed around (a
    dataset's items, scorer definitions). The same checks, on the same occasions."""

    def __post_init__(self) -> None:
        _check_fields(self)


class Output(msgspec.Struct, kw_only=True):
    """Base for service results and response bodies."""


# A page's size in bytes when no setting is passed (SWITCHBOARD_MAX_PAGE_BYTES is the
# deployment's).
DEFAULT_PAGE_BYTES = 1024 * 1024


class Page(Output, Generic[T], kw_only=True):
    """One page of a listing; pass ``next_cursor`` back to get the next one."""

    data: list[T]
    next_cursor: str | None = None


# Room kept in a page's byte budget for what wraps its items (``{"data": [...],
# "next_cursor": "..."}``): more than the longest cursor, so the whole body fits.
PAGE_ENVELOPE_BYTES = 512
_measure = msgspec.json.Encoder().encode


def bounded_page(
    items: list[T], *, more: bool, max_bytes: int, cursor: Callable[[T], str]
) -> Page[T]:
    """A page of ``items`` (in listing order) cut where their JSON, as it is sent, would
    pass ``max_bytes``; always at least one item, so a page always moves on.

    Listings choose their rows by the bytes a database stores, which it counts cheaply but
    which undercount what is sent: a control character leaves as a 6-byte escape
    (``\\u0001``), a quote or a backslash as 2. Measuring the encoded items bounds what a
    client is sent (and a server holds for a client that does not read), whatever the text.
    ``more``: rows follow ``items``; ``cursor`` makes the next page's cursor from the last
    item kept.
    """
    budget = max_bytes - PAGE_ENVELOPE_BYTES
    kept, total = 0, 0
    for item in items:
        total += len(_measure(item)) + 1  # and its comma
        if kept and total > budget:
            break
        kept += 1
    if kept < len(items):
        items, more = items[:kept], True
    return Page(data=items, next_cursor=cursor(items[-1]) if more and items else None)


def encode_cursor(listing: str, *values: object) -> str:
    """A page's ``next_cursor``: where ``listing`` goes on, named so that a cursor of one
    listing handed to another is refused, not read as a place in it."""
    raw = msgspec.json.encode((listing, *values))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@cache
def _tagged(types: Any) -> Any:
    """``tuple[X, Y]`` as ``tuple[str, X, Y]``: the listing's name, then its values."""
    return tuple.__class_getitem__((str, *get_args(types)))


# What a cursor's values may be: what the rows they came from can hold.
_CURSOR_TIMES = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))


def _cursor_value_ok(value: object) -> bool:
    if isinstance(value, datetime):
        return value.tzinfo is not None and _CURSOR_TIMES[0] <= value <= _CURSOR_TIMES[1]
    if isinstance(value, int) and not isinstance(value, bool):
        return 0 <= value <= 2**31 - 1
    if isinstance(value, str):
        return "\x00" not in value
    return True


def decode_cursor(cursor: str, listing: str, types: type[T]) -> T:
    """Decode a cursor made by :func:`encode_cursor` for ``listing``; a mangled or tampered
    one, or another listing's, is a 400.

    Values no row could have produced (a date in year 1 or 9999, a number beyond a column)
    are refused here rather than by a database driver.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tagged = msgspec.json.decode(raw, type=_tagged(cast("Any", types)))
        if tagged[0] != listing:
            raise ValueError("a cursor of another listing")
        values = tagged[1:]
        if not all(_cursor_value_ok(v) for v in values):
            raise ValueError("cursor value out of range")
        return cast("T", values)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidInputError(
            "invalid cursor: pass back the next_cursor value from the previous page unchanged",
            details={"field": "cursor"},
        ) from exc
