"""``POST /v1/embeddings``: passed to an embedding server, answered byte for byte.

The call is counted in the usage ledger and not stored as a conversation
(``functions.core.embeddings``). A model no embedding server serves is a 404, a generating
model a 400 (``model_kind_mismatch``), both in OpenAI's shape before anything is sent.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from functions.core.embeddings import service as embeddings
from functions.core.errors import ModelNotAllowedError
from functions.core.keys.schemas import Principal
from functions.core.llm.errors import ModelKindError
from functions.core.web.docs import errors
from functions.core.web.errors import request_id_of
from functions.core.web.policy import OPENAI
from functions.core.web.state import runtime_of
from functions.openai.embedding_schemas import EmbeddingCreate

KIND_MISMATCH = "the model is a generating model: embeddings come from SWITCHBOARD_EMBEDDING_URLS"
NOT_ALLOWED = "the key may not use this model (its allowed_configs or allowed_models)"


@post(
    "/embeddings",
    summary="Create embeddings (OpenAI-compatible)",
    status_code=200,
    responses=errors(
        404,
        413,
        415,
        502,
        504,
        codes={ModelKindError: KIND_MISMATCH, ModelNotAllowedError: NOT_ALLOWED},
        policy=OPENAI,
    ),
)
async def create_embeddings(
    *,
    data: JSONBody[EmbeddingCreate],
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
) -> Response[bytes]:
    """vLLM's embeddings for ``input`` (``encoding_format`` ``float`` or ``base64``), from
    a server named in ``SWITCHBOARD_EMBEDDING_URLS``; counted in usage, not stored."""
    raw: dict[str, Any] = msgspec.json.decode(await request.body())
    answer = await embeddings.embed(
        runtime_of(request.app.state).require_llm(),
        owner=principal.key_id,
        access=principal.access,
        model=data.model,
        body=raw,
        request_id=request_id_of(request),
    )
    return Response(answer.body, status_code=200, media_type="application/json")
