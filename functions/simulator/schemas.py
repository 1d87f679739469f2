"""Wire shapes: what clients send the simulator and what it answers (non-streaming parts).

Request Structs ignore unknown fields, as vLLM does (``extra="allow"``). Response Structs keep
every field, nulls included, in vLLM's order, because vLLM serializes with ``model_dump()``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ContentPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class Message(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    # Tool calling turns are accepted as vLLM accepts them; only their text reaches the
    # template here.
    tool_calls: list[dict[str, object]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The text a chat template would see (non-text parts contribute nothing)."""
        content = self.content
        if content is None or isinstance(content, str):
            return content or ""
        return "".join(part.text for part in content if part.text is not None)


class FunctionSpec(msgspec.Struct):
    name: str
    parameters: dict[str, object] | None = None


class Tool(msgspec.Struct):
    function: FunctionSpec
    type: str = "function"


class NamedToolChoice(msgspec.Struct):
    function: FunctionSpec
    type: str = "function"


class StreamOptions(msgspec.Struct):
    """Unset fields stay ``UNSET``: vLLM tells ``{}`` (falsy, allowed without ``stream``)
    from an explicit ``null``, and defaults ``include_usage`` to true."""

    include_usage: bool | msgspec.UnsetType | None = msgspec.UNSET
    continuous_usage_stats: bool | msgspec.UnsetType | None = msgspec.UNSET

    @property
    def empty(self) -> bool:
        """``{}``: vLLM's ``if data.get("stream_options")`` does not see it."""
        return self.include_usage is msgspec.UNSET and self.continuous_usage_stats is msgspec.UNSET

    def usage(self, stream: bool) -> tuple[bool, bool]:
        """``include_usage`` and ``continuous_usage_stats`` as vLLM's ``should_include_usage``
        reads them (usage defaults to on once the options are sent)."""
        include = stream and self.include_usage is not False and self.include_usage is not None
        return include, include and bool(self.continuous_usage_stats)


class JsonSchemaSpec(msgspec.Struct):
    """``response_format.json_schema``: the schema is under ``schema``, as OpenAI sends it."""

    name: str | None = None
    schema: Any = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaSpec | None = None


class StructuredOutputs(msgspec.Struct):
    """vLLM's ``structured_outputs`` (``StructuredOutputsParams``); ``json`` may be a schema
    object or its JSON text."""

    json: Any = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None


class ChatRequest(msgspec.Struct):
    messages: list[Message]
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    request_id: str | None = None
    tools: list[Tool] | None = None
    # "none", "auto", "required", or a named function.
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = True
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None


class CompletionRequest(msgspec.Struct):
    """``POST /v1/completions``. ``prompt`` is a string, a list of strings, a token-id list or
    a list of them; msgspec cannot tell list shapes apart in a union, so the planner does."""

    prompt: str | list[Any] | None = None
    model: str | None = None
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    request_id: str | None = None
    add_special_tokens: bool = True
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    prompt_embeds: Any = None


class EmbeddingRequest(msgspec.Struct):
    """``POST /v1/embeddings``: ``input`` (string(s) or token ids) or chat ``messages``."""

    input: str | list[Any] | None = None
    messages: list[Message] | None = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    add_special_tokens: bool | None = None
    request_id: str | None = None


class TokenizeRequest(msgspec.Struct):
    """Either form of ``/tokenize``: ``prompt`` text or chat ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False


class TokenizeResponse(msgspec.Struct):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeRequest(msgspec.Struct):
    tokens: list[int]
    model: str | None = None


class DetokenizeResponse(msgspec.Struct):
    prompt: str


class HealthToggle(msgspec.Struct):
    """``POST /sim/health`` body."""

    healthy: bool


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionCall


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    # None when the reply is a tool call, as vLLM answers.
    content: str | None
    refusal: None = None
    annotations: None = None
    audio: None = None
    function_call: None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    reasoning: None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str
    stop_reason: str | None
    token_ids: None = None


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int
    prompt_tokens_details: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    service_tier: None = None
    system_fingerprint: None = None
    usage: Usage
    prompt_logprobs: None = None
    prompt_token_ids: None = None
    prompt_text: None = None
    kv_transfer_params: None = None


class TextChoice(msgspec.Struct, kw_only=True):
    """A choice of ``/v1/completions`` (vLLM's ``CompletionResponseChoice``)."""

    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str
    stop_reason: str | None
    token_ids: None = None
    prompt_logprobs: None = None
    prompt_token_ids: None = None


class TextCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    service_tier: None = None
    system_fingerprint: None = None
    usage: Usage
    kv_transfer_params: None = None


class Embedding(msgspec.Struct, kw_only=True):
    index: int
    object: str = "embedding"
    # A list of floats, or their float32 bytes in base64.
    embedding: list[float] | str


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    """vLLM's ``UsageInfo`` as an embedding fills it: no completion, so zero."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class EmbeddingList(msgspec.Struct, kw_only=True):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


class ModelPermission(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: None = None
    is_blocking: bool = False


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "vllm"
    root: str
    parent: None = None
    max_model_len: int
    permission: list[ModelPermission]


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]
