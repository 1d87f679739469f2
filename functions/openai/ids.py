"""OpenAI-shaped ids for stored rows: one prefix per kind of thing the OpenAI API shows.

The ids are the rows' own UUIDs with OpenAI's prefix (``conv_``, ``msg_``, ``resp_``,
``chatcmpl-``) and the UUID's 32 hex digits, so every door reads and writes the same rows
and no second table of copies maps one id to another. A response and a stored chat
completion are both named by their reply (the assistant message that answered), a
conversation by its row, an item by its message.

An id that is malformed, carries another kind's prefix, or names nothing is the same
"not found" to a caller: parsing gives ``None`` and the route answers 404 exactly as for a
well-formed id that names no row of the caller's key, so neither the shape nor the
timing tells one key about another's rows.
"""

from __future__ import annotations

import re
from enum import StrEnum
from uuid import UUID


class IdKind(StrEnum):
    """The prefixes, each with the separator OpenAI's own ids use."""

    CONVERSATION = "conv_"
    MESSAGE = "msg_"
    RESPONSE = "resp_"
    CHAT_COMPLETION = "chatcmpl-"


_HEX32 = re.compile(r"[0-9a-f]{32}")


def format_id(kind: IdKind, row_id: UUID) -> str:
    """The OpenAI-shaped id of a row: ``conv_`` and the UUID's hex digits, for example."""
    return f"{kind.value}{row_id.hex}"


def parse_id(kind: IdKind, text: str) -> UUID | None:
    """The row UUID an id of this kind names, or ``None`` when it is not such an id."""
    if not text.startswith(kind.value):
        return None
    digits = text[len(kind.value) :]
    if _HEX32.fullmatch(digits) is None:
        return None
    return UUID(hex=digits)
