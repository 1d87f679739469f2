"""Public shapes of the vLLM client: what callers send, get back and read for monitoring.

These are the client's vocabulary, not vLLM's wire format (that lives in ``wire.py``), so
they stay stable when vLLM's JSON shifts between releases.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One OpenAI-format message; ``content`` may be a string or a list of content parts."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


# A legacy completion's ``prompt``: text, texts, token ids or lists of them (vLLM's forms;
# msgspec takes one array type in a union, so the list's items are not typed here).
CompletionPrompt = str | list[Any]


class ChatRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Parameters of one chat completion.

    ``model`` may be left out: any upstream may then answer with its first served model.
    ``extra`` is merged into the JSON body as is, for vLLM's own sampling parameters
    (``top_k``, ``min_p``, ``repetition_penalty``, ...); it cannot override the fields above
    nor ``stream``/``stream_options``, which the client owns. ``n`` (in ``extra``) above 1
    is read back only by ``stream_raw``, whose caller gathers each choice by its ``index``.
    """

    messages: list[ChatMessage]
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    # Set for a legacy completion: vLLM's ``/v1/completions`` is asked with this ``prompt``
    # (a string, token ids, ...) as sent, and ``messages`` (what is stored) is not sent.
    completion_prompt: CompletionPrompt | None = None


class Usage(msgspec.Struct, kw_only=True):
    """Token counts exactly as the upstream reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResult(msgspec.Struct, kw_only=True):
    """A finished non-streaming completion and where it came from.

    ``upstream_id``/``upstream_url`` name the vLLM server that answered; ``request_id`` is
    the caller's (the client's ``X-Request-Id``), ``upstream_request_id`` the id the gateway
    made for this call and sent upstream as ``X-Request-Id``, and ``response_id`` that
    server's id for the completion (vLLM's is ``chatcmpl-`` + the id sent).
    ``usage`` is None when the upstream did not report it; it is never estimated.
    ``tool_calls`` holds the message's tool calls as the upstream sent them, or None when it
    made none (vLLM's empty list included).
    """

    content: str
    finish_reason: str | None
    usage: Usage | None
    model: str
    upstream_id: str
    upstream_url: str
    latency_ms: float
    request_id: str | None = None
    upstream_request_id: str | None = None
    response_id: str | None = None
    # Set when the completion was read as a stream (``collect_chat``).
    ttft_ms: float | None = None
    tool_calls: list[dict[str, Any]] | None = None


class RawCompletion(msgspec.Struct, kw_only=True):
    """A non-streaming completion exactly as the upstream sent it, and what was read from it.

    ``body`` is the upstream's JSON body byte for byte, for a caller that forwards it.
    """

    body: bytes
    result: ChatResult


class ChatDelta(msgspec.Struct, kw_only=True, tag="delta"):
    """A piece of generated text, in arrival order (one event may hold several tokens)."""

    text: str


class ChatDone(msgspec.Struct, kw_only=True, tag="done"):
    """The last event of a stream.

    ``ttft_ms`` is the time to the first chunk with a choice (vLLM's role chunk, sent after
    prefill), as ``vllm bench serve`` measures it. ``usage`` is None when not reported.
    ``upstream_id``/``upstream_url`` and the ids are as in :class:`ChatResult`.
    ``tool_calls`` holds the reply's tool calls merged from their deltas (OpenAI's message
    shape), or None when it made none.
    """

    finish_reason: str | None
    usage: Usage | None
    model: str
    upstream_id: str
    upstream_url: str
    ttft_ms: float | None
    latency_ms: float
    request_id: str | None = None
    upstream_request_id: str | None = None
    response_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


StreamEvent = ChatDelta | ChatDone


class UpstreamEvent(msgspec.Struct, kw_only=True, tag="upstream"):
    """One SSE event of an upstream stream: its bytes as sent, and what was read from them.

    ``raw`` is the event's ``data:`` payload byte for byte (without the ``data: `` prefix and
    the blank line that ends it), so ``b"data: " + raw + b"\\n\\n"`` forwards it verbatim.
    The other fields come from the event's choice (vLLM sends one per chunk, ``index``
    saying which of ``n``): ``text`` is
    the content delta ("" if none), ``tool_calls`` the tool-call deltas as sent,
    ``reasoning`` the reasoning delta (``reasoning`` or older vLLM's ``reasoning_content``),
    ``finish_reason`` set on the choice's last chunk. ``usage`` is set on the usage chunk
    (and on every chunk with ``continuous_usage_stats``); ``usage_only`` marks a chunk with
    no choices, only usage, which the client always asks for.
    """

    raw: bytes
    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    usage_only: bool = False
    reasoning: str | None = None
    # The choice the event carries (``n`` > 1: vLLM interleaves its choices by ``index``).
    index: int = 0


RawStreamEvent = UpstreamEvent | ChatDone


class RawEmbedding(msgspec.Struct, kw_only=True):
    """An embedding answer exactly as the upstream sent it (``body``), and what was read
    from it: the usage (None when not reported) and where it came from."""

    body: bytes
    usage: Usage | None
    model: str
    upstream_id: str
    upstream_url: str
    latency_ms: float
    upstream_request_id: str | None = None


class ModelInfo(msgspec.Struct, kw_only=True):
    """A model served by at least one upstream, with the upstream ids that serve it."""

    id: str
    owned_by: str | None
    root: str | None
    parent: str | None
    max_model_len: int | None
    upstreams: list[str]


class UpstreamHealth(msgspec.Struct, kw_only=True):
    """One active probe of one upstream (``/health``, ``/v1/models``, ``/metrics``, ``/version``).

    ``healthy`` means ``/health`` answered 200. Gauges are None when ``/metrics`` was
    unreachable or did not carry them; with several engines, request counts are summed and
    the KV-cache usage (0-1) is the highest engine's.
    """

    id: str
    url: str
    reachable: bool
    healthy: bool
    health_status: int | None
    models: list[str]
    num_requests_running: float | None
    num_requests_waiting: float | None
    kv_cache_usage_perc: float | None
    version: str | None
    is_simulator: bool
    latency_ms: float | None
    error: str | None = None


UpstreamState = Literal["up", "ejected", "half_open", "down"]


class UpstreamStats(msgspec.Struct, kw_only=True):
    """A point-in-time view of one upstream, for metrics.

    ``state``: ``up``; ``ejected`` after repeated connect failures (``ejected_for_s`` left);
    ``half_open`` once the cooldown is over and the next request is a trial; ``down`` when
    a health check marked it so. ``queue_depth`` and ``running`` are vLLM's own
    ``num_requests_waiting``/``num_requests_running`` from the last ``health()`` call.
    """

    id: str
    url: str
    state: UpstreamState
    in_flight: int
    max_in_flight: int
    consecutive_failures: int
    ejected_for_s: float
    models: list[str] | None
    requests_total: int
    connect_failures_total: int
    ejections_total: int
    queue_depth: float | None
    running: float | None


class LLMStats(msgspec.Struct, kw_only=True):
    """A point-in-time view of the whole client.

    ``overloaded_total`` counts requests refused because every candidate was at its cap,
    ``retries_total`` the attempts made again after a retry-safe failure.
    """

    upstreams: list[UpstreamStats]
    in_flight: int
    max_in_flight: int
    overloaded_total: int
    retries_total: int
