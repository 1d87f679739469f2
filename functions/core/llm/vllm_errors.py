"""Turn vLLM's error bodies into the client's typed errors.

vLLM has used three shapes over its releases and this reads all of them: the nested
``{"error": {"message", "type", "param", "code"}}`` (v0.10.1 on, also mid-stream), the legacy
flat ``{"object": "error", "message", ...}``, and bare strings such as
``{"error": "Unauthorized"}``; plus FastAPI's ``{"detail": ...}`` and empty bodies.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from functions.core.llm.errors import (
    ContextLengthExceededError,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMOverloadedError,
    LLMUnavailableError,
    ModelNotFoundError,
)

MAX_MESSAGE_CHARS = 1000
_CONTEXT_PARAMS = frozenset({"input_tokens", "max_tokens", "max_completion_tokens"})

# Numbers stated in the context-length messages of the releases the contract lists; each
# pattern is optional, so a reworded message still yields whatever it does state.
_CONTEXT_NUMBERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("max_context_length", re.compile(r"maximum context length is (\d+)")),
    ("max_context_length", re.compile(r"max_model_len=(?:\w+=)*(\d+)")),
    ("requested_output_tokens", re.compile(r"requested (\d+) output tokens")),
    ("requested_output_tokens", re.compile(r"max_(?:completion_)?tokens=(\d+)")),
    ("requested_output_tokens", re.compile(r"(\d+) in the completion")),
    ("prompt_tokens", re.compile(r"prompt contains (\d+) input tokens")),
    ("prompt_tokens", re.compile(r"request has (\d+) input tokens")),
    ("prompt_tokens", re.compile(r"parameter=input_tokens, value=(\d+)")),
    ("prompt_tokens", re.compile(r"(\d+) in the messages")),
    ("total_tokens", re.compile(r"for a total of (\d+) tokens")),
    ("total_tokens", re.compile(r"you requested (\d+) tokens \(")),
)


class UpstreamErrorBody(msgspec.Struct, frozen=True):
    """What could be read from an error body; every field may be missing."""

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: int | None = None
    detail: str | None = None


def parse_error_body(body: bytes | str | dict[str, Any] | None) -> UpstreamErrorBody:
    """Read any of vLLM's error shapes (or a non-JSON body) into one struct."""
    obj: Any = body
    if isinstance(body, bytes | str):
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        try:
            obj = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return UpstreamErrorBody(message=text.strip()[:MAX_MESSAGE_CHARS])
    if isinstance(obj, str):
        return UpstreamErrorBody(message=obj[:MAX_MESSAGE_CHARS])
    if not isinstance(obj, dict):
        return UpstreamErrorBody()
    inner = obj.get("error")
    if isinstance(inner, str):
        return UpstreamErrorBody(message=inner[:MAX_MESSAGE_CHARS])
    source: dict[str, Any] = inner if isinstance(inner, dict) else obj
    code = source.get("code")
    param = source.get("param")
    detail = obj.get("detail")
    return UpstreamErrorBody(
        message=str(source.get("message") or "")[:MAX_MESSAGE_CHARS],
        type=str(source["type"]) if source.get("type") is not None else None,
        param=str(param) if param is not None else None,
        code=code if isinstance(code, int) else None,
        detail=str(detail)[:MAX_MESSAGE_CHARS] if detail is not None else None,
    )


def context_numbers(message: str) -> dict[str, int]:
    """The token counts a context-length message states, by name."""
    numbers: dict[str, int] = {}
    for name, pattern in _CONTEXT_NUMBERS:
        if name not in numbers and (match := pattern.search(message)):
            numbers[name] = int(match.group(1))
    return numbers


def is_context_length_error(status: int, error: UpstreamErrorBody) -> bool:
    return status == 400 and (
        "maximum context length" in error.message.lower() or error.param in _CONTEXT_PARAMS
    )


def error_for_status(
    status: int, body: bytes, *, details: dict[str, Any], model: str | None
) -> LLMError:
    """The typed error for an HTTP error response of a chat or model-list request."""
    error = parse_error_body(body)
    info = {**details, "upstream_status": status}
    if message := error.message or error.detail or "":
        info["upstream_message"] = message
    if status in (401, 403):
        return LLMAuthError(
            "the LLM server rejected the gateway's API key (check SWITCHBOARD_LLM_API_KEY)",
            details=info,
        )
    if status == 404:
        return _not_found(error, info, model)
    if status in (400, 413, 422, 429, 501):
        return _rejected(status, error, info)
    if status == 503:
        return LLMUnavailableError(
            message or "the LLM server is temporarily unavailable", details=info
        )
    if not message:
        return LLMError(f"the LLM server failed with an empty {status} response", details=info)
    return LLMError(f"the LLM server failed: {message}", details=info)


def _not_found(error: UpstreamErrorBody, info: dict[str, Any], model: str | None) -> LLMError:
    if error.detail is not None and error.param is None:
        # FastAPI's own 404: the path is wrong, so the configured base URL is.
        return LLMError(
            "the LLM server has no such endpoint (check SWITCHBOARD_LLM_URLS)", details=info
        )
    return ModelNotFoundError(
        error.message or f"model {model!r} does not exist", details={**info, "model": model}
    )


def _rejected(status: int, error: UpstreamErrorBody, info: dict[str, Any]) -> LLMError:
    if status == 429:
        # vLLM never sends it, but a proxy in front of it may.
        return LLMOverloadedError("the LLM server is rate limiting", details=info)
    if is_context_length_error(status, error):
        return ContextLengthExceededError(
            error.message or "the request does not fit the model's context length",
            details={**info, **context_numbers(error.message)},
        )
    if error.param is not None:
        info["param"] = error.param
    message = error.message or error.detail or "the LLM server rejected the request"
    return LLMBadRequestError(message, details=info)


def error_for_event(error: Any, *, details: dict[str, Any], partial_text: str) -> LLMError:
    """The typed error for an ``{"error": ...}`` event received after the stream began."""
    parsed = parse_error_body({"error": error})
    info = {**details, "upstream_message": parsed.message}
    if parsed.code is not None:
        info["upstream_code"] = parsed.code
    return LLMError(
        f"the LLM server failed mid-stream: {parsed.message or 'unknown error'}",
        details=info,
        partial_text=partial_text,
    )
