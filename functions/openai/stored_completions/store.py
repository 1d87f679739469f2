"""``store`` and ``metadata`` on ``POST /v1/chat/completions``: what lists a completion.

The door stores every exchange whatever ``store`` says; ``store: true`` also lists it
(``GET /v1/chat/completions``) with the request's ``metadata``, once the exchange is
stored and before vLLM's answer is read. ``store`` false or left out lists nothing, as
OpenAI's default. Neither field is sent to vLLM: they are the gateway's, not the model's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.errors import InvalidInputError
from functions.core.stored_completions import service as completions
from functions.openai.metadata import Metadata, check_metadata

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable

    from functions.core.chat.schemas import MessageStarted


def requested(
    raw: dict[str, Any], owner: uuid.UUID
) -> Callable[[MessageStarted], Awaitable[None]] | None:
    """Take ``store`` and ``metadata`` out of the body's passed-through fields ``raw``:
    what lists the completion once it is stored, or None (a 400 names either field when
    it is not OpenAI's type or over OpenAI's limits)."""
    store = raw.pop("store", None)
    if store is not None and not isinstance(store, bool):
        raise InvalidInputError("store is true or false", details={"field": "store"})
    try:
        given = msgspec.convert(raw.pop("metadata", None), Metadata | None)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(f"metadata: {exc}", details={"field": "metadata"}) from None
    metadata = check_metadata(given)
    if not store:
        return None

    async def listed(started: MessageStarted) -> None:
        reply = started.assistant_message
        await completions.store(owner, reply.id, reply.conversation_id, metadata)

    return listed
