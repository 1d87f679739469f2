"""OpenAPI helpers: document which error codes an endpoint can answer with."""

from __future__ import annotations

import uuid

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from functions.core.errors import InvalidInputError
from functions.core.web.schemas import ErrorBody

_MEANINGS = {
    400: "validation_error / invalid_json / context_length_exceeded: fix the request",
    401: "unauthorized: missing, malformed, unknown or revoked API key",
    403: "forbidden: the key lacks the admin scope",
    404: "not_found: no such object for this key (another key's objects are not found either)",
    409: "conflict / conversation_busy: the object already exists or is being changed",
    413: "payload_too_large: the body exceeds SWITCHBOARD_MAX_BODY_BYTES",
    502: "llm_error: vLLM failed or returned an error",
    503: "llm_unavailable / llm_overloaded / database_unavailable: try again shortly",
    504: "llm_timeout: vLLM did not answer in time",
}


_EXAMPLE_CODES = {
    400: ("validation_error", "invalid request: temperature: Expected `float` <= 2.0"),
    401: ("unauthorized", "missing API key: send 'Authorization: Bearer sb-...'"),
    403: ("forbidden", "this needs an API key with the admin scope"),
    404: ("not_found", "conversation 3f0c6a52-5b7e-4a3c-9d43-2b1f3f1e8a10 not found"),
    409: ("conflict", "a configuration named 'support' already exists"),
    413: ("payload_too_large", "the request body is larger than the 1048576-byte limit"),
    502: ("llm_error", "vLLM at 10.0.0.5:8000 answered 500: EngineCore encountered an issue"),
    503: ("llm_unavailable", "no vLLM upstream is reachable"),
    504: ("llm_timeout", "no first token from 10.0.0.5:8000 within 60.0s"),
}


def _example(status: int) -> Example:
    code, message = _EXAMPLE_CODES[status]
    return Example(
        summary=code,
        value={
            "error": {
                "code": code,
                "message": message,
                "request_id": "9b2f4c1de0a34f7e8c1b2a3d4e5f6a7b",
                "details": {},
            }
        },
    )


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Response specs for the given error statuses, plus the 401 every /v1 route has."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            description=_MEANINGS[status],
            examples=[_example(status)],
        )
        for status in sorted({401, *statuses})
    }


def parse_id(value: str, what: str) -> uuid.UUID:
    """A path id as a UUID, or a 400 that says what an id looks like."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError(
            f"{value!r} is not a valid {what} id: ids are UUIDs",
            details={"id": value},
        ) from None
