"""Response shapes shared by every function: errors and probes (also used in OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from functions.core.schemas import Output


class ErrorDetail(Output, kw_only=True):
    code: str = msgspec.field(name="code")
    message: str
    request_id: str | None
    details: dict[str, Any]


class ErrorBody(Output, kw_only=True):
    """``{"error": {...}}``: the only error shape Switchboard sends."""

    error: ErrorDetail


class Liveness(Output, kw_only=True):
    status: Literal["ok"] = "ok"


class DatabaseReadiness(Output, kw_only=True):
    status: Literal["ok", "down"]
    engine: str
    error: str | None = None


class UpstreamReadiness(Output, kw_only=True):
    url: str
    state: str
    in_flight: int
    models: list[str] | None = None


class LLMReadiness(Output, kw_only=True):
    status: Literal["ok", "degraded", "simulated", "down", "not_used"]
    upstreams: list[UpstreamReadiness] = msgspec.field(default_factory=list)


class Readiness(Output, kw_only=True):
    status: Literal["ok", "degraded", "unavailable"]
    function: str
    database: DatabaseReadiness
    llm: LLMReadiness
