"""API keys as callers and operators see them. The secret appears only in ``ApiKeyCreated``."""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import datetime
from itertools import combinations
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from functions.core.schemas import END, Input, Output

Scope = Literal["admin", "chat"]

# What a key's name may not hold anywhere, as it is shown in `keys list`, logs and
# terminals: control characters (line breaks, escape sequences, NUL), invisible formatting
# (bidi overrides that reverse how a line reads, zero-width characters), separators other
# than the plain space, private use: the assigned characters Python's ``str.isprintable``
# refuses (Unicode categories Cc, Cf, Zl, Zp, Zs but U+0020, Co) in Unicode 14; and every
# Default_Ignorable_Code_Point (DerivedCoreProperties.txt: U+034F, the variation selectors
# FE00-FE0F and E0100-E01EF, fillers, tags...), which render as nothing, so two names could
# differ by them invisibly. tests/functions/test_key_names.py derives the table again from
# ``unicodedata`` and checks every code point against the pattern and the service.
_REFUSED = (
    (0x0000, 0x001F), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x034F, 0x034F),
    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x1680, 0x1680),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2000, 0x200F), (0x2028, 0x202F),
    (0x205F, 0x206F), (0x3000, 0x3000), (0x3164, 0x3164), (0xE000, 0xF8FF),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFB),
    (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
)  # fmt: skip


def _in_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """Code point ranges as the inside of a character class that Python and ECMAScript
    (the OpenAPI document's dialect, with the ``u`` flag JSON Schema asks for) read alike:
    ``\\uXXXX`` escapes in the Basic Multilingual Plane, the characters themselves beyond
    it (Python's ``\\U`` escape is not ECMAScript's ``\\u{}``)."""

    def one(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


NOT_PRINTABLE = _in_class(_REFUSED)
# Printable, yet nothing shows: blanks that are letters or symbols to Unicode (Hangul
# fillers, the blank Braille pattern), and combining marks (with nothing to combine with).
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5")
BLANK = "".join(f"\\u{ord(char):04x}" for char in sorted(_BLANKS))  # as pattern escapes
COMBINING = r"\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
# Scripts whose letters pass for one another (Latin a, Cyrillic U+0430, Greek U+03B1): a
# name uses letters of one of them at most, as in UTS #39's "moderately restrictive"
# profile. Each script's letters in the Basic Multilingual Plane: those Unicode names after
# it (full-width ones too), in Unicode 14; the test derives them again from ``unicodedata``.
LOOKALIKE_SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "Latin": (
        (0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x00D6), (0x00D8, 0x00F6),
        (0x00F8, 0x02AF), (0x1D00, 0x1D25), (0x1D62, 0x1D65), (0x1D6B, 0x1D77),
        (0x1D79, 0x1D9A), (0x1E00, 0x1EFF), (0x2090, 0x209C), (0x2184, 0x2184),
        (0x2C60, 0x2C7C), (0x2C7E, 0x2C7F), (0xA722, 0xA76F), (0xA771, 0xA787),
        (0xA78B, 0xA7CA), (0xA7D0, 0xA7D1), (0xA7D3, 0xA7D3), (0xA7D5, 0xA7D9),
        (0xA7F5, 0xA7F7), (0xA7FA, 0xA7FF), (0xAB30, 0xAB5A), (0xAB60, 0xAB64),
        (0xAB66, 0xAB68), (0xFB00, 0xFB06), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A),
    ),
    "Greek": (
        (0x0370, 0x0374), (0x0376, 0x0377), (0x037A, 0x037D), (0x037F, 0x037F),
        (0x0386, 0x0386), (0x0388, 0x038A), (0x038C, 0x038C), (0x038E, 0x03A1),
        (0x03A3, 0x03E1), (0x03F0, 0x03F5), (0x03F7, 0x03FF), (0x1D26, 0x1D2A),
        (0x1D66, 0x1D6A), (0x1F00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45),
        (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B),
        (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC),
        (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3),
        (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC),
        (0xAB65, 0xAB65),
    ),
    "Cyrillic": (
        (0x0400, 0x0481), (0x048A, 0x052F), (0x1C80, 0x1C88), (0x1D2B, 0x1D2B),
        (0xA640, 0xA66E), (0xA67F, 0xA69B),
    ),
}  # fmt: skip
_LETTERS = {script: _in_class(ranges) for script, ranges in LOOKALIKE_SCRIPTS.items()}
# For each pair of those scripts: not (a letter of one anywhere and one of the other).
ONE_SCRIPT = "".join(
    rf"(?!(?=[\s\S]*[{_LETTERS[a]}])[\s\S]*[{_LETTERS[b]}])"
    for a, b in combinations(LOOKALIKE_SCRIPTS, 2)
)
# The rule itself: the service matches names with this pattern, and the OpenAPI document
# shows it. ``(?!\n)$``: Python's ``$`` also matches before a final newline.
KEY_NAME_PATTERN = (
    rf"^{ONE_SCRIPT}[^{NOT_PRINTABLE}]*[^\s{NOT_PRINTABLE}{BLANK}{COMBINING}]"
    rf"[^{NOT_PRINTABLE}]*{END}"
)
_KEY_NAME = re.compile(KEY_NAME_PATTERN)
_ONE_SCRIPT = re.compile(ONE_SCRIPT)
_SCRIPT_LETTER = {script: re.compile(f"[{letters}]") for script, letters in _LETTERS.items()}
# Surrogates are not characters: a name holding one (from an argument that is not UTF-8)
# could not be stored. JSON cannot carry one, so the pattern need not say it.
_SURROGATE = re.compile("[\ud800-\udfff]")
KEY_NAME_MAX = 100
KEY_NAME_RULE = (
    f"a key's name is 1 to {KEY_NAME_MAX} printable characters, at least one of them "
    "visible (not only spaces, blanks or accents): no control characters, line breaks, "
    "invisible formatting or default-ignorable characters (such as variation selectors)"
)


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a key's name, in words, or None: a name matches
    :data:`KEY_NAME_PATTERN` (the documented pattern) and is 1 to 100 characters."""
    if _ONE_SCRIPT.match(name) is None:
        mixed = [script for script, letter in _SCRIPT_LETTER.items() if letter.search(name)]
        return (
            f"a key's name may not mix {' and '.join(mixed)} letters, which look alike: "
            "write it in one of them"
        )
    if not 0 < len(name) <= KEY_NAME_MAX or _SURROGATE.search(name) is not None:
        return KEY_NAME_RULE
    return None if _KEY_NAME.search(name) is not None else KEY_NAME_RULE


def name_skeleton(name: str) -> str:
    """What a name looks like, for telling look-alikes apart: NFKC (full-width, ligature
    and mathematical letters as plain ones), case-folded, runs of spaces as one."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


KeyName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=KEY_NAME_MAX,
        # Documented, not enforced here: the service checks the whole rule and says it in
        # words (a failed pattern would quote the regex to the client).
        extra_json_schema={"pattern": KEY_NAME_PATTERN},
        description="Printable characters only (no control, line-break, invisible "
        "formatting or default-ignorable characters), at least one visible (not a space, "
        "blank or accent), letters of at most one of Latin, Greek and Cyrillic (they look "
        "alike): the pattern is the whole rule. A name that looks like another active "
        "key's (the same once NFKC-normalised and case-folded) but is not the same is a 409.",
        examples=["billing-service"],
    ),
]


PerMinute = Annotated[int, Meta(ge=1, le=100_000_000)]
TokenBudget = Annotated[int, Meta(ge=1, le=10**15)]
Concurrency = Annotated[int, Meta(ge=1, le=1_000_000)]


class KeyLimits(Input, kw_only=True):
    """A key's own limits (functions/core/limits). A field left null takes the gateway's
    default (``SWITCHBOARD_LIMIT_DEFAULT_<FIELD>``), and no limit when that is unset too.
    Tokens count the prompt and the reply, as vLLM reports them."""

    requests_per_minute: PerMinute | None = None
    tokens_per_minute: TokenBudget | None = None
    max_concurrent: Concurrency | None = None
    tokens_per_day: TokenBudget | None = None
    tokens_per_month: TokenBudget | None = None


LIMIT_FIELDS = KeyLimits.__struct_fields__


# What a key may use: configurations by name, models as served (or as a configuration
# names them). At most 100 of each; an empty list allows nothing of that kind.
AllowedConfigs = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=100)]],
    Meta(
        max_length=100,
        description="The configurations (by name) this key may send through; null: any. "
        "A send to a bare model has no configuration, so a key with this list cannot make one.",
        examples=[["support-bot"]],
    ),
]
AllowedModels = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=200)]],
    Meta(
        max_length=100,
        description="The models this key may use, directly or through a configuration; null: any.",
        examples=[["llama-3.1-8b"]],
    ),
]
ExpiresAt = Annotated[
    datetime,
    Meta(
        tz=True,
        description="When the key stops working (RFC 3339 with a time zone); null: never. "
        "An expired key is a 401, as a revoked one.",
    ),
]


class KeyAccess(msgspec.Struct, frozen=True, kw_only=True):
    """What a key may send to: ``configs`` (names) and ``models``; None allows any. Both
    apply when both are set: a send through configuration ``c`` of model ``m`` needs ``c``
    in ``configs`` and ``m`` in ``models``; a send to a bare model (no configuration) is
    refused by any ``configs`` list. The one rule, for sends and model lists alike."""

    configs: frozenset[str] | None = None
    models: frozenset[str] | None = None

    @property
    def unrestricted(self) -> bool:
        return self.configs is None and self.models is None

    def allows(self, config: str | None, model: str | None) -> bool:
        if self.configs is not None and (config is None or config not in self.configs):
            return False
        return self.models is None or (model is not None and model in self.models)


# Evaluations and replays run by an operator (flows, notebooks): not a caller's key.
UNRESTRICTED = KeyAccess()


class ApiKeyCreate(Input, kw_only=True):
    name: KeyName
    scopes: Annotated[list[Scope], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["chat"]
    )
    expires_at: ExpiresAt | None = None
    allowed_configs: AllowedConfigs | None = None
    allowed_models: AllowedModels | None = None
    limits: KeyLimits = msgspec.field(default_factory=KeyLimits)


class ApiKeyOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    expires_at: datetime | None = None
    allowed_configs: list[str] | None = None
    allowed_models: list[str] | None = None
    limits: KeyLimits = msgspec.field(default_factory=KeyLimits)


class ApiKeyUpdate(Input, kw_only=True):
    """A partial edit of a key's access (the body of ``PATCH``): the fields present
    change, the others stay; ``null`` clears one (no expiry, any configuration or model)."""

    expires_at: ExpiresAt | UnsetType | None = UNSET
    allowed_configs: AllowedConfigs | UnsetType | None = UNSET
    allowed_models: AllowedModels | UnsetType | None = UNSET


class ApiKeyCreated(ApiKeyOut, kw_only=True):
    """Returned once, at creation: ``secret`` is never stored and cannot be shown again."""

    secret: str


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller of a request."""

    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]
    access: KeyAccess = UNRESTRICTED
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes
