"""vLLM's JSON as the client reads it: only the fields it uses, decoded by typed decoders.

Unknown fields are ignored (vLLM adds fields between releases), and every field has a
default, so a missing one never fails a decode that did not need it. ``error`` is ``Any``
because vLLM sends an object in one place and a bare string in another.
"""

from __future__ import annotations

from typing import Any

import msgspec

from functions.core.llm.schemas import Usage


class Delta(msgspec.Struct):
    content: str | None = None
    # Tool-call pieces are kept as sent: a caller passing the stream on needs all of them.
    tool_calls: list[dict[str, Any]] | None = None
    # vLLM up to v0.11 says ``reasoning_content``, v0.16 on ``reasoning``, v0.12-v0.15 both.
    reasoning: str | None = None
    reasoning_content: str | None = None


class StreamChoice(msgspec.Struct):
    # Which of the request's ``n`` choices the chunk carries (one per chunk in vLLM).
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    # A legacy completion's chunk carries its text here, not in a delta.
    text: str | None = None


class StreamChunk(msgspec.Struct):
    """One ``data:`` event of a chat stream (a content chunk, the usage chunk or an error)."""

    id: str | None = None
    model: str | None = None
    choices: list[StreamChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: Any = None


class Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(msgspec.Struct):
    message: Message = msgspec.field(default_factory=Message)
    finish_reason: str | None = None


class Completion(msgspec.Struct):
    """A non-streaming ``chat.completion`` body."""

    id: str | None = None
    model: str = ""
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: Any = None


class EmbeddingAnswer(msgspec.Struct):
    """What the client reads of an embeddings body (the vectors pass through unread)."""

    model: str = ""
    usage: Usage | None = None
    error: Any = None


class ModelCard(msgspec.Struct):
    id: str
    owned_by: str | None = None
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(msgspec.Struct):
    data: list[ModelCard] = msgspec.field(default_factory=list)


stream_chunk_decoder = msgspec.json.Decoder(StreamChunk)
completion_decoder = msgspec.json.Decoder(Completion)
model_list_decoder = msgspec.json.Decoder(ModelList)
embedding_decoder = msgspec.json.Decoder(EmbeddingAnswer)
