"""A reply's failure, as told by the send path's ``error`` event, raised as the error it was.

The send path records a failed reply and reports it as an event (``code``, ``message``,
``details``), not as the exception: the door gives it its status again by its code, which
the one exception hierarchy fixes (``functions.core.errors``), so a context-length error
is a 400 and an unavailable upstream a 503 here as on every other route.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from functions.core.errors import SwitchboardError
from functions.core.web.errors import Problem, openai_body


def _subclasses(base: type[SwitchboardError]) -> list[type[SwitchboardError]]:
    found: list[type[SwitchboardError]] = []
    for sub in base.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


@cache
def _status_by_code() -> dict[str, int]:
    # Read when the first failure is reported: every error module is imported by then.
    return {error.code: error.status_code for error in _subclasses(SwitchboardError)}


@cache
def _error_class(code: str, status: int) -> type[SwitchboardError]:
    return type("ReplyFailure", (SwitchboardError,), {"code": code, "status_code": status})


def status_of(code: str) -> int:
    """The HTTP status of a failure's code (502 for one no class declares)."""
    return _status_by_code().get(code, 502)


def raised(error: dict[str, Any], placed: dict[str, str] | None = None) -> SwitchboardError:
    """The exception for an ``error`` event's ``error``, to raise before any byte is sent;
    ``placed``: the headers that say where the failed exchange was stored (OpenAI's error
    body has no room for it), sent with the error as with an answer."""
    code = str(error.get("code", "llm_error"))
    details = error.get("details")
    return _error_class(code, status_of(code))(
        str(error.get("message", "")),
        details=details if isinstance(details, dict) else None,
        headers=placed,
    )


def error_chunk(error: dict[str, Any]) -> dict[str, Any]:
    """An ``error`` event as the SSE chunk OpenAI's SDKs raise mid-stream (``{"error":
    {message, type, param, code}}``)."""
    code = str(error.get("code", "llm_error"))
    return openai_body(Problem(status_of(code), code, str(error.get("message", ""))), None)
