"""The async vLLM client: ``LLMClient`` and the shapes and errors it speaks in.

``client.py`` is the entry point: ``chat``/``stream_chat`` for Switchboard's own use,
``chat_raw``/``stream_raw`` for callers that pass vLLM's answer on as sent.
``upstreams.py`` and ``model_lists.py`` route, ``dispatch.py`` sends with safe retries,
``transport.py`` builds the shared HTTP client, ``streaming.py``/``sse.py``/``wire.py`` read
vLLM's answers, ``vllm_errors.py`` and ``errors.py`` turn its failures into typed errors,
``probes.py`` checks an upstream's health.
"""

from functions.core.llm.client import LLMClient
from functions.core.llm.errors import (
    ContextLengthExceededError,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMOverloadedError,
    LLMTimeoutError,
    LLMUnavailableError,
    ModelNotFoundError,
    ModelNotServedError,
)
from functions.core.llm.schemas import (
    ChatDelta,
    ChatDone,
    ChatMessage,
    ChatRequest,
    ChatResult,
    LLMStats,
    ModelInfo,
    RawCompletion,
    RawStreamEvent,
    StreamEvent,
    UpstreamEvent,
    UpstreamHealth,
    UpstreamStats,
    Usage,
)

__all__ = [
    "ChatDelta",
    "ChatDone",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "ContextLengthExceededError",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMClient",
    "LLMError",
    "LLMOverloadedError",
    "LLMStats",
    "LLMTimeoutError",
    "LLMUnavailableError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelNotServedError",
    "RawCompletion",
    "RawStreamEvent",
    "StreamEvent",
    "UpstreamEvent",
    "UpstreamHealth",
    "UpstreamStats",
    "Usage",
]
