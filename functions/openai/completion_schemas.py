"""What the door reads of ``POST /v1/completions`` (the legacy text completions).

As for chat, only the fields the door acts on are declared; every other field of the raw
body reaches vLLM as it came (``echo``, ``logprobs``, ``suffix``, ``top_k``, ...).
``prompt`` is read from the raw body too (``text_completions.one_prompt``): its forms (a
string, strings, token ids, lists of token ids) are more than one msgspec union can hold.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from functions.core.configs.schemas import MaxTokens, Seed, Temperature, TopP
from functions.openai.schemas import StopField, StreamOptions


class CompletionCreate(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/completions`` the door reads (the others pass through).

    ``model`` is a configuration (``name`` or ``name@version``: its model and sampling
    defaults apply; a completion has no turns for its system prompt) or a served model.
    """

    model: Annotated[str, Meta(min_length=1, max_length=300)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    # vLLM's own default for a completion is 16; null means what the context leaves.
    max_tokens: MaxTokens | None = None
    stop: StopField | None = None
    seed: Seed | None = None
    user: str | None = None
