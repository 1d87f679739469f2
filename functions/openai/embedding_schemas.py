"""What the door reads of ``POST /v1/embeddings``: the model only.

Every field (``input``, ``encoding_format``, ``dimensions``, ``user``, vLLM's
``truncate_prompt_tokens``, the chat form ``messages``, ...) reaches the embedding server as
it came, and vLLM judges it: its 400s come back in OpenAI's shape.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class EmbeddingCreate(msgspec.Struct, kw_only=True):
    """``model``: a model an embedding server serves (``GET /v1/models`` lists them)."""

    model: Annotated[str, Meta(min_length=1, max_length=300)]
