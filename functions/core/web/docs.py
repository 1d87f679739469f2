"""OpenAPI helpers: document which error codes an endpoint can answer with."""

from __future__ import annotations

import uuid

from litestar.openapi.datastructures import ResponseSpec

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


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Response specs for the given error statuses, plus the 401 every /v1 route has."""
    return {
        status: ResponseSpec(data_container=ErrorBody, description=_MEANINGS[status])
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
