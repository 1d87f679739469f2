"""Typed failures of the vLLM client, one class per case a caller can act on differently.

All of them derive from :class:`LLMError`, so ``except LLMError`` catches anything the
client raises on purpose. ``partial_text`` carries what a stream produced before it broke,
so a chat service can keep (or show) the partial answer. ``details`` never holds secrets:
upstream URLs in it are already stripped of credentials.
"""

from __future__ import annotations

from typing import Any, Literal

from functions.core.errors import SwitchboardError

TimeoutPhase = Literal["connect", "first_token", "between_tokens", "total"]


class LLMError(SwitchboardError):
    """The upstream answered with something unusable: a 5xx, an error mid-stream, bad JSON."""

    status_code = 502
    code = "llm_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        partial_text: str = "",
    ) -> None:
        super().__init__(message, details=details)
        self.partial_text = partial_text


class LLMUnavailableError(LLMError):
    """No upstream could take the request: unreachable, ejected, marked down or 503."""

    status_code = 503
    code = "llm_unavailable"


class LLMOverloadedError(LLMError):
    """Every upstream that serves the model is at its in-flight cap.

    vLLM queues without limit, so the client sheds load here instead of piling on.
    """

    status_code = 503
    code = "llm_overloaded"


class LLMTimeoutError(LLMError):
    """A timeout fired; ``phase`` says which one (also in ``details["phase"]``)."""

    status_code = 504
    code = "llm_timeout"

    def __init__(
        self,
        message: str,
        *,
        phase: TimeoutPhase,
        details: dict[str, Any] | None = None,
        partial_text: str = "",
    ) -> None:
        details = {**(details or {}), "phase": phase}
        super().__init__(message, details=details, partial_text=partial_text)
        self.phase: TimeoutPhase = phase


class LLMAuthError(LLMError):
    """vLLM rejected the gateway's API key.

    A 502, not a 401: the caller's own credentials are fine, the gateway is misconfigured.
    """

    code = "llm_auth_failed"


class ModelNotFoundError(LLMError):
    """vLLM does not serve the requested model (its 404)."""

    status_code = 404
    code = "model_not_found"


class ModelNotServedError(ModelNotFoundError):
    """No upstream in the pool lists the model in ``/v1/models``; nothing was sent."""

    code = "model_not_served"


class LLMBadRequestError(LLMError):
    """vLLM refused the request as invalid (its 400, or 501 for an unsupported feature)."""

    status_code = 400
    code = "llm_bad_request"


class ContextLengthExceededError(LLMBadRequestError):
    """Prompt plus requested output do not fit the model's context window.

    ``details`` holds whichever of ``max_context_length``, ``prompt_tokens``,
    ``requested_output_tokens`` and ``total_tokens`` the upstream message stated.
    """

    code = "context_length_exceeded"


class ModelKindError(LLMBadRequestError):
    """The model is served, but not for this kind of request: a generating model asked for
    embeddings, or an embedding model asked to generate (vLLM serves each from its own
    server, and says a model "does not support" the other's API)."""

    code = "model_kind_mismatch"
