"""Wire shapes: what clients send the simulator and what it answers (non-streaming parts).

Request Structs ignore unknown fields, as vLLM does (``extra="allow"``). Response Structs keep
every field, nulls included, in vLLM's order, because vLLM serializes with ``model_dump()``.
"""

from __future__ import annotations

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
    # vLLM defaults include_usage to True: ``"stream_options": {}`` asks for usage.
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


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
    logprobs: None = None
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
