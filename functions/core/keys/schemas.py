"""API keys as callers and operators see them. The secret appears only in ``ApiKeyCreated``."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from functions.core.schemas import Input, Output

Scope = Literal["admin", "chat"]

# What a key's name may not hold, as it is shown in `keys list`, logs and terminals:
# control characters (line breaks, escape sequences, NUL), invisible formatting (bidi
# overrides that reverse how a line reads, zero-width characters), separators other than
# the plain space, surrogates and private use: what Python's ``str.isprintable`` refuses
# (Unicode categories Cc, Cf, Zl, Zp, Zs but U+0020, Cs, Co). As a pattern for msgspec and
# the OpenAPI document it covers the Basic Multilingual Plane but surrogates (an ECMAScript
# pattern has no escape beyond the BMP, and regex engines refuse surrogate ranges; a JSON
# body with a lone one is not valid UTF-8 anyway); the service checks the whole name with
# :func:`is_printable_name`.
NOT_PRINTABLE = (
    r"\x00-\x1f\x7f-\xa0\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u1680"
    r"\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ue000-\uf8ff\ufeff"
    r"\ufff9-\ufffb"
)
# Printable, yet nothing shows: blanks that are letters or symbols to Unicode (Hangul
# fillers, the blank Braille pattern), and combining marks (with nothing to combine with).
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5")
BLANK = "".join(f"\\u{ord(char):04x}" for char in sorted(_BLANKS))  # as pattern escapes
COMBINING = r"\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
KEY_NAME_PATTERN = (
    rf"^[^{NOT_PRINTABLE}]*[^\s{NOT_PRINTABLE}{BLANK}{COMBINING}][^{NOT_PRINTABLE}]*$"
)
KEY_NAME_MAX = 100
KEY_NAME_RULE = (
    f"a key's name is 1 to {KEY_NAME_MAX} printable characters, at least one of them "
    "visible (not only spaces, blanks or accents): no control characters, line breaks or "
    "invisible formatting characters"
)


def _visible(char: str) -> bool:
    return not char.isspace() and char not in _BLANKS and unicodedata.category(char)[0] != "M"


def is_printable_name(name: str) -> bool:
    """Whether ``name`` is a key name (see :data:`KEY_NAME_RULE`)."""
    return (
        0 < len(name) <= KEY_NAME_MAX
        and name.isprintable()
        and any(_visible(char) for char in name)
    )


KeyName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=KEY_NAME_MAX,
        # Documented, not enforced here: the service checks the whole rule and says it in
        # words (a failed pattern would quote the regex to the client).
        extra_json_schema={"pattern": KEY_NAME_PATTERN},
        description="Printable characters only (no control, line-break or invisible "
        "formatting characters), at least one visible (not a space, blank or accent).",
        examples=["billing-service"],
    ),
]


class ApiKeyCreate(Input, kw_only=True):
    name: KeyName
    scopes: Annotated[list[Scope], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["chat"]
    )


class ApiKeyOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut, kw_only=True):
    """Returned once, at creation: ``secret`` is never stored and cannot be shown again."""

    secret: str


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller of a request."""

    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes
