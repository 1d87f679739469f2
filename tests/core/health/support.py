"""Probe results as the LLM client reports them, for recording in tests."""

from __future__ import annotations

from functions.core.llm.schemas import UpstreamHealth


def probed(
    url: str,
    *,
    healthy: bool = True,
    models: list[str] | None = None,
    error: str | None = None,
    is_simulator: bool = False,
) -> UpstreamHealth:
    """One upstream's probe: answering (with a model and gauges) or not at all."""
    host = url.split("//", 1)[1].split("/", 1)[0]
    return UpstreamHealth(
        id=host,
        url=url,
        reachable=healthy,
        healthy=healthy,
        health_status=200 if healthy else None,
        models=(["m"] if healthy else []) if models is None else models,
        num_requests_running=3.0 if healthy else None,
        num_requests_waiting=1.0 if healthy else None,
        kv_cache_usage_perc=0.25 if healthy else None,
        version="0.11.0" if healthy else None,
        is_simulator=is_simulator,
        latency_ms=4.5 if healthy else None,
        error=error if healthy or error else "/health: ConnectError: refused",
    )
