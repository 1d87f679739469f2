"""Base Structs for everything that crosses an edge (HTTP, CLI, flows).

``Input`` carries the policy for what callers send: unknown fields are an error, not
silently dropped, so a typo in a field name is reported instead of ignored. ``Output`` is
what services return; every field is always present so clients see a stable shape.
"""

from __future__ import annotations

import base64
import binascii
from typing import Generic, TypeVar

import msgspec

from functions.core.errors import InvalidInputError

T = TypeVar("T")


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for request bodies and service inputs."""


class Output(msgspec.Struct, kw_only=True):
    """Base for service results and response bodies."""


class Page(Output, Generic[T], kw_only=True):
    """One page of a listing; pass ``next_cursor`` back to get the next one."""

    data: list[T]
    next_cursor: str | None = None


def encode_cursor(*values: object) -> str:
    raw = msgspec.json.encode(values)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, types: type[T]) -> T:
    """Decode a cursor made by :func:`encode_cursor`; a mangled one is a 400, not a 500."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=types)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidInputError(
            "invalid cursor: pass back the next_cursor value from the previous page unchanged",
            details={"cursor": cursor},
        ) from exc
