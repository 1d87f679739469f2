"""What the OpenAI door reads from a request and what it answers besides vLLM's own bytes.

Request Structs hold only the fields the door acts on: the router's policy ignores the
rest when decoding, and the handler passes them on from the raw body (``chat_request``),
so a field vLLM accepts reaches it unchanged whether or not it is named here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from functions.core.configs.schemas import MaxTokens, Seed, Temperature, TopP
from functions.core.messages.schemas import Role
from functions.core.schemas import Output

# OpenAI's own limit on a request's stop sequences is 4; vLLM takes any number.
StopField = str | Annotated[list[str], Meta(max_length=64)]


class ChatMessageIn(msgspec.Struct, kw_only=True):
    """One message of ``messages``, in OpenAI's shape. ``content`` is a string, a list of
    content parts, or null (an assistant turn that only calls tools). What the databases
    would not store alike is checked as the messages become turns
    (``chat_request.turns_of``), in one pass, not field by field as they are decoded."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    """As vLLM reads it: ``"stream_options": {}`` asks for the usage chunk."""

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ChatCompletionCreate(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/chat/completions`` the door reads (the others pass through).

    ``model`` is a configuration (``name`` or ``name@version``) or a model served upstream.
    """

    model: Annotated[str, Meta(min_length=1, max_length=300)]
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: StopField | None = None
    seed: Seed | None = None
    user: str | None = None


class ModelOut(Output, kw_only=True):
    """One entry of ``GET /v1/models``, in OpenAI's shape plus what vLLM and Switchboard add.

    ``switchboard``: for a configuration, ``{"kind": "config", "name", "version", "model"}``;
    for a model served upstream, ``{"kind": "upstream", "upstreams": [...]}``.
    """

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    switchboard: dict[str, Any] = msgspec.field(default_factory=dict)


class ModelList(Output, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelOut]
