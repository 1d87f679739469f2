"""Response shapes shared by every function: errors (in each policy's shape) and probes
(also used in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from functions.core.schemas import Output


class ErrorDetail(Output, kw_only=True):
    code: str = msgspec.field(name="code")
    message: str
    request_id: str | None
    details: dict[str, Any]


class ErrorBody(Output, kw_only=True):
    """``{"error": {...}}``: the error shape of Switchboard's own API."""

    error: ErrorDetail


class OpenAIErrorDetail(Output, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(Output, kw_only=True):
    """``{"error": {...}}`` as OpenAI sends it: what a router under OpenAI's policy sends."""

    error: OpenAIErrorDetail


class Liveness(Output, kw_only=True):
    status: Literal["ok"] = "ok"


class DatabaseReadiness(Output, kw_only=True):
    """``not_migrated``: reachable, but some Switchboard table is missing."""

    status: Literal["ok", "down", "not_migrated"]
    engine: str
    error: str | None = None
    code: Literal["database_unavailable", "database_not_migrated"] | None = None


class UpstreamCheck(Output, kw_only=True):
    """The newest health check this process knows of for one upstream.

    ``source``: ``recorded`` by a checker for the whole deployment, or this process's own
    ``startup`` probe when no recorded check is newer. ``steering``: a recorded verdict
    young enough to be in effect (a ``down`` one keeps the upstream out of this process's
    rotation); false once it is older, and always for the start-up probe.
    """

    source: Literal["recorded", "startup"]
    status: Literal["ok", "degraded", "down"]
    checked_at: datetime
    age_s: float
    steering: bool
    latency_ms: float | None = None
    is_simulator: bool = False
    error: str | None = None


class UpstreamReadiness(Output, kw_only=True):
    """One upstream: ``state`` is this process's routing state (up, half_open, ejected,
    down), ``last_check`` what the newest health check said."""

    url: str
    state: str
    in_flight: int
    models: list[str] | None = None
    last_check: UpstreamCheck | None = None


class LLMReadiness(Output, kw_only=True):
    """``unknown``: no upstream is known to be out, but not every one has been checked.

    ``checks_error`` says why recorded checks could not be read (the database is down).
    """

    status: Literal["ok", "degraded", "simulated", "down", "unknown", "not_used"]
    upstreams: list[UpstreamReadiness] = msgspec.field(default_factory=list)
    checks_error: str | None = None


class Readiness(Output, kw_only=True):
    status: Literal["ok", "degraded", "unavailable"]
    function: str
    database: DatabaseReadiness
    llm: LLMReadiness
