"""Embeddings: passed to an embedding server and counted in the usage ledger, not stored.

vLLM serves embeddings only from an embedding model, on a server of its own
(``SWITCHBOARD_EMBEDDING_URLS``); the LLM client routes the request there by the model
lists. The answer is returned byte for byte. Each call that reached an upstream is one
row of the usage ledger (``usage.ledger``): its prompt tokens, or its error; nothing is
stored as a conversation. A model no embedding server serves is refused before anything
is sent or counted (404 unknown, 400 a generating model).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.core.keys import access as keys_access
from functions.core.llm.errors import LLMError
from functions.core.usage.ledger import UnstoredCall, record_unstored

if TYPE_CHECKING:
    import uuid

    from functions.core.keys.schemas import KeyAccess
    from functions.core.llm.client import LLMClient
    from functions.core.llm.schemas import RawEmbedding


async def embed(
    llm: LLMClient,
    *,
    owner: uuid.UUID,
    access: KeyAccess,
    model: str,
    body: dict[str, Any],
    request_id: str | None = None,
) -> RawEmbedding:
    """vLLM's answer to ``body`` (an embeddings request, passed as is) from a server of
    ``model``, charged to ``owner`` in the usage ledger. Raises the client's
    :class:`LLMError` (recorded as a failed call when it came from an upstream), or a
    403 when the key may not use ``model`` (an embedding model has no configuration)."""
    keys_access.require(access, config=None, model=model)
    await llm.require_model(model, embeddings=True)
    asked_at = datetime.now(UTC)
    try:
        answer = await llm.embed_raw(body, model=model, request_id=request_id)
    except LLMError as exc:
        await record_unstored(
            UnstoredCall(
                owner=owner,
                model=model,
                status="failed",
                asked_at=asked_at,
                finished_at=datetime.now(UTC),
                upstream=exc.details.get("upstream_url"),
                error_code=exc.code,
                error_message=exc.message,
            )
        )
        raise
    usage = answer.usage
    await record_unstored(
        UnstoredCall(
            owner=owner,
            model=answer.model,
            status="complete",
            asked_at=asked_at,
            finished_at=datetime.now(UTC),
            upstream=answer.upstream_url,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=answer.latency_ms,
        )
    )
    return answer
