"""Reading vLLM's error bodies (every shape the contract lists) into typed errors."""

from __future__ import annotations

import pytest

from functions.core.llm.errors import (
    ContextLengthExceededError,
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMOverloadedError,
    LLMUnavailableError,
    ModelNotFoundError,
)
from functions.core.llm.vllm_errors import (
    UpstreamErrorBody,
    context_numbers,
    error_for_event,
    error_for_status,
    parse_error_body,
)

NESTED_404 = (
    b'{"error":{"message":"The model `foo` does not exist.","type":"NotFoundError",'
    b'"param":"model","code":404}}'
)
LEGACY_404 = (
    b'{"object":"error","message":"The model `foo` does not exist.","type":"NotFoundError",'
    b'"param":null,"code":404}'
)
CONTEXT_NOW = (
    "This model's maximum context length is 8192 tokens. However, you requested 8000 output "
    "tokens and your prompt contains 300 input tokens, for a total of 8300 tokens. Please "
    "reduce the length of the input prompt or the number of requested output tokens. "
    "(parameter=input_tokens, value=300)"
)
CONTEXT_MAX_TOKENS = (
    "max_tokens=9000 cannot be greater than max_model_len=max_total_tokens=8192. "
    "Please request fewer output tokens."
)
CONTEXT_PROMPT_ONLY = (
    "This model's maximum context length is 64 tokens. However, your request has 70 input "
    "tokens. Please reduce the length of the input messages. (parameter=input_tokens, value=70)"
)
CONTEXT_V091 = (
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages "
    "or completion."
)


def test_nested_legacy_and_bare_string_shapes() -> None:
    nested = parse_error_body(NESTED_404)
    legacy = parse_error_body(LEGACY_404)
    assert nested == UpstreamErrorBody(
        message="The model `foo` does not exist.", type="NotFoundError", param="model", code=404
    )
    assert legacy.message == nested.message
    assert legacy.code == 404
    assert parse_error_body(b'{"error":"Unauthorized"}').message == "Unauthorized"
    assert parse_error_body(b'{"detail":"Not Found"}').detail == "Not Found"
    assert parse_error_body(b"") == UpstreamErrorBody()
    assert parse_error_body(b"<html>bad gateway</html>").message == "<html>bad gateway</html>"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            CONTEXT_NOW,
            {
                "max_context_length": 8192,
                "requested_output_tokens": 8000,
                "prompt_tokens": 300,
                "total_tokens": 8300,
            },
        ),
        (CONTEXT_MAX_TOKENS, {"max_context_length": 8192, "requested_output_tokens": 9000}),
        (CONTEXT_PROMPT_ONLY, {"max_context_length": 64, "prompt_tokens": 70}),
        (
            CONTEXT_V091,
            {
                "max_context_length": 4096,
                "total_tokens": 5000,
                "prompt_tokens": 4000,
                "requested_output_tokens": 1000,
            },
        ),
        ("'max_tokens' or 'max_completion_tokens' is too large", {}),
    ],
)
def test_context_numbers_of_each_release_wording(message: str, expected: dict[str, int]) -> None:
    assert context_numbers(message) == expected


def _body(message: str, param: str | None, code: int = 400) -> bytes:
    param_json = "null" if param is None else f'"{param}"'
    return (
        f'{{"error":{{"message":"{message}","type":"BadRequestError",'
        f'"param":{param_json},"code":{code}}}}}'
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "error_type", "code", "http_status"),
    [
        (404, NESTED_404, ModelNotFoundError, "model_not_found", 404),
        (404, LEGACY_404, ModelNotFoundError, "model_not_found", 404),
        (404, b'{"detail":"Not Found"}', LLMError, "llm_error", 502),
        (
            400,
            _body(CONTEXT_NOW, "input_tokens"),
            ContextLengthExceededError,
            "context_length_exceeded",
            400,
        ),
        (
            400,
            _body("too big", "max_completion_tokens"),
            ContextLengthExceededError,
            "context_length_exceeded",
            400,
        ),
        (
            400,
            _body("temperature must be non-negative", "temperature"),
            LLMBadRequestError,
            "llm_bad_request",
            400,
        ),
        (
            501,
            _body("tools are not supported", None, 501),
            LLMBadRequestError,
            "llm_bad_request",
            400,
        ),
        (401, b'{"error":"Unauthorized"}', LLMAuthError, "llm_auth_failed", 502),
        (429, b"", LLMOverloadedError, "llm_overloaded", 503),
        (500, b"", LLMError, "llm_error", 502),
        (500, _body("EngineCore encountered an issue.", None, 500), LLMError, "llm_error", 502),
        (
            503,
            b'{"error":"The model is currently scaling. Please try again later."}',
            LLMUnavailableError,
            "llm_unavailable",
            503,
        ),
    ],
)
def test_error_for_status(
    status: int, body: bytes, error_type: type[LLMError], code: str, http_status: int
) -> None:
    error = error_for_status(status, body, details={"upstream": "u"}, model="foo")
    assert type(error) is error_type
    assert (error.code, error.status_code) == (code, http_status)
    assert error.details["upstream_status"] == status
    assert error.details["upstream"] == "u"


def test_context_length_error_carries_the_numbers() -> None:
    error = error_for_status(400, _body(CONTEXT_NOW, "input_tokens"), details={}, model=None)
    assert error.details["max_context_length"] == 8192
    assert error.details["prompt_tokens"] == 300
    assert str(error) == CONTEXT_NOW


def test_empty_500_says_so() -> None:
    assert "empty 500" in str(error_for_status(500, b"", details={}, model=None))


def test_mid_stream_error_keeps_partial_text_in_either_shape() -> None:
    for inner in (
        {"message": "boom", "type": "InternalServerError", "param": None, "code": 500},
        {"object": "error", "message": "boom", "type": "BadRequestError", "code": 400},
        "boom",
    ):
        error = error_for_event(inner, details={}, partial_text="Hel")
        assert (error.code, error.partial_text) == ("llm_error", "Hel")
        assert "boom" in str(error)
