"""Usage: the traffic, tokens, latency and errors of the gateway's replies, over time."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Literal

import msgspec

Bucket = Literal["hour", "day"]
BUCKET_LENGTH: dict[Bucket, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """The replies of one configuration and model in one time bucket (or the whole window,
    in :attr:`UsageReport.totals`, where ``start`` is the window's start).

    ``config`` is the configuration's name (None: a reply to a bare model); latency and
    time to first token are over the completed replies, in milliseconds (p50 and p95
    interpolate linearly between order statistics).
    """

    start: datetime
    config: str | None
    model: str | None
    replies: int
    complete: int
    failed: int
    cancelled: int
    pending: int
    conversations: int
    prompt_tokens: int
    completion_tokens: int
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None

    @property
    def error_rate(self) -> float:
        """Failed and cancelled replies over the finished ones (0 when none finished)."""
        finished = self.complete + self.failed + self.cancelled
        return (self.failed + self.cancelled) / finished if finished else 0.0


class ErrorCount(msgspec.Struct, frozen=True, kw_only=True):
    """How often replies of a configuration and model ended with one error code."""

    config: str | None
    model: str | None
    error_code: str
    count: int
    last_seen: datetime
    example: str


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """Replies created in ``[since, until)``: per bucket, for the whole window, and errors."""

    since: datetime
    until: datetime
    bucket: Bucket
    rows: list[UsageRow]
    totals: list[UsageRow]
    errors: list[ErrorCount]

    def bucket_starts(self) -> list[datetime]:
        """Every bucket of the window, empty ones included (for charts over time)."""
        step = BUCKET_LENGTH[self.bucket]
        first = self.since.replace(minute=0, second=0, microsecond=0)
        if self.bucket == "day":
            first = first.replace(hour=0)
        starts: list[datetime] = []
        at = first
        while at < self.until:
            starts.append(at)
            at += step
        return starts


# ``GET /v1/usage``: what a row can be grouped by.
Dimension = Literal["key", "config", "config_version", "model", "upstream", "day", "hour"]
DIMENSIONS: tuple[Dimension, ...] = (
    "key",
    "config",
    "config_version",
    "model",
    "upstream",
    "day",
    "hour",
)


class Percentiles(msgspec.Struct, frozen=True, kw_only=True):
    """Of the completed replies, in milliseconds, read from the rollup's histogram: within
    one bucket (a factor of √2) of the exact value; null when no reply completed."""

    p50: float | None
    p95: float | None


class UsageGroup(msgspec.Struct, frozen=True, kw_only=True):
    """The exchanges of one group (the fields not grouped by are null).

    ``requests`` counts every finished exchange (``complete`` + ``failed`` +
    ``cancelled``); ``errors`` counts them by error code (a failure's, or ``cancelled``
    for a reply the client left); tokens are as vLLM counted them, whatever the ending.
    """

    start: datetime | None
    key_id: uuid.UUID | None
    key_name: str | None
    config: str | None
    config_version: int | None
    model: str | None
    upstream: str | None
    requests: int
    complete: int
    failed: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    errors: dict[str, int]
    latency_ms: Percentiles
    ttft_ms: Percentiles


class UsageOut(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/usage``: the exchanges asked in ``[from, to)``, grouped by ``group_by``
    (no grouping: one row, the totals; no row when there was no exchange)."""

    from_: datetime = msgspec.field(name="from")
    to: datetime
    group_by: list[Dimension]
    data: list[UsageGroup]
