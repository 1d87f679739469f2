"""OpenAI's ``metadata``: at most 16 pairs, keys up to 64 characters, string values up to 512.

The same limits OpenAI sets wherever its API takes ``metadata`` (conversations, stored
chat completions, responses), so a client's metadata that OpenAI accepts is accepted
here and one it refuses is refused the same way: a 400 naming ``metadata``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from functions.core.errors import InvalidInputError

MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512

# Key and value lengths are checked by ``check_metadata``, so that every refusal names
# ``metadata`` (a decoder's error inside a dict names no field).
Metadata = Annotated[
    dict[str, str],
    Meta(
        max_length=MAX_PAIRS,
        description="At most 16 pairs; keys up to 64 characters, string values up to 512.",
    ),
]


def check_metadata(metadata: dict[str, str] | None, field: str = "metadata") -> dict[str, str]:
    """``metadata`` as stored (None: empty); a key or value over OpenAI's length, or a NUL
    (which the databases do not store alike), is a 400 naming the field (the type bounds
    the number of pairs)."""
    for key, value in (metadata or {}).items():
        problem = None
        if len(key) > MAX_KEY_CHARS:
            problem = f"keys are at most {MAX_KEY_CHARS} characters (one has {len(key)})"
        elif len(value) > MAX_VALUE_CHARS:
            problem = f"values are at most {MAX_VALUE_CHARS} characters ({key!r} has {len(value)})"
        elif "\x00" in key or "\x00" in value:
            problem = "keys and values may not contain NUL (\\u0000)"
        if problem is not None:
            raise InvalidInputError(f"{field}: {problem}", details={"field": field})
    return dict(metadata or {})
