"""What the Responses routes read from a request.

Only the fields the door acts on are named; the router's policy ignores the rest when
decoding and the handler passes vLLM's own fields on from the raw body (``request``), as
the door does for chat completions. ``input`` items stay dicts here: their many shapes
are read one by one, each refused by its index and field (``items``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from functions.core.configs.schemas import MaxTokens, Temperature, TopP
from functions.core.schemas import check_value
from functions.openai.metadata import MAX_KEY_CHARS, MAX_PAIRS, MAX_VALUE_CHARS

MAX_INPUT_ITEMS = 10_000
# OpenAI's limits on a request's ``metadata`` (``functions.openai.metadata``), keys
# included: a key over 64 characters was stored and shown back.
Metadata = Annotated[
    dict[
        Annotated[str, Meta(max_length=MAX_KEY_CHARS)],
        Annotated[str, Meta(max_length=MAX_VALUE_CHARS)],
    ],
    Meta(max_length=MAX_PAIRS),
]


class TextFormat(msgspec.Struct, kw_only=True):
    """``text.format``: ``text`` (the default), ``json_object`` or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextOptions(msgspec.Struct, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ConversationRef(msgspec.Struct, kw_only=True):
    id: str


class ResponseCreate(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/responses`` the door reads (vLLM's extras pass through)."""

    model: Annotated[str, Meta(min_length=1, max_length=300)]
    input: str | Annotated[list[dict[str, Any]], Meta(max_length=MAX_INPUT_ITEMS)] = ""
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    metadata: Metadata | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    stream: bool | None = False
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # What is stored must be storable alike on both databases (a NUL, a huge int):
        # every field the reply's row keeps (``api_request``), or PostgreSQL's jsonb
        # refused a NUL with a 500 after the reply was claimed, where SQLite stored it.
        check_value(self.model, "model")
        if isinstance(self.input, list):
            check_value(self.input, "input")
        for field in ("instructions", "tools", "tool_choice", "metadata", "user", "reasoning"):
            value = getattr(self, field)
            if value is not None:
                check_value(value, field)
        if self.text is not None:
            check_value(msgspec.to_builtins(self.text), "text")

    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation
