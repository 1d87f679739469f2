"""The two refusals a limit answers with, both 429 before anything is stored or sent.

``rate_limit_exceeded``: a rate or a concurrency cap; ``Retry-After`` (whole seconds, at
most 120, so OpenAI's SDKs wait for it and retry) and ``retry-after-ms``. A request larger
than its key's whole per-minute limit can never pass, so it says ``x-should-retry:
false`` instead. ``insufficient_quota``: a token budget is spent; ``x-should-retry:
false``, so SDKs stop rather than retry into it (openai-python reads that header before
its status rules).
"""

from __future__ import annotations

import math
from typing import Any

from functions.core.errors import SwitchboardError

MAX_RETRY_AFTER_S = 120


class RateLimitedError(SwitchboardError):
    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, wait_ms: int | None, details: dict[str, Any], headers: list[Any]
    ) -> None:
        answer = {name.decode(): value.decode() for name, value in headers}
        if wait_ms is None:
            answer["x-should-retry"] = "false"
        else:
            seconds = min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait_ms / 1000)))
            answer["Retry-After"] = str(seconds)
            answer["retry-after-ms"] = str(max(1, min(wait_ms, MAX_RETRY_AFTER_S * 1000)))
        super().__init__(message, details=details, headers=answer)


class QuotaExceededError(SwitchboardError):
    status_code = 429
    code = "insufficient_quota"

    def __init__(self, message: str, *, details: dict[str, Any], headers: list[Any]) -> None:
        answer = {name.decode(): value.decode() for name, value in headers}
        answer["x-should-retry"] = "false"
        super().__init__(message, details=details, headers=answer)
