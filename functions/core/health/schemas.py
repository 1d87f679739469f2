"""Upstream health as a checker records it and every serving process reads it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from functions.core.schemas import Output

# ``down``: /health did not answer 200 (or not at all). ``degraded``: it did, but something
# else of the check failed (no model list, say): still routable. ``ok``: everything answered.
HealthStatus = Literal["ok", "degraded", "down"]


class HealthGauges(Output, kw_only=True):
    """vLLM's load when it was checked; None where its ``/metrics`` page had no such gauge."""

    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None  # 0-1, the fullest engine's


class HealthCheckOut(Output, kw_only=True):
    """One upstream's verdict from one health check.

    ``upstream`` is the upstream's base URL without credentials (``UpstreamHealth.url``),
    the same in every process configured with it.
    """

    id: uuid.UUID
    checked_at: datetime
    upstream: str
    status: HealthStatus
    latency_ms: float | None
    models: list[str]
    gauges: HealthGauges
    is_simulator: bool
    error: str | None
