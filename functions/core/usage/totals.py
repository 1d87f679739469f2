"""``GET /v1/usage`` and ``switchboard usage``: the usage rollup over a window, grouped.

Read from ``usage_rollup`` (``functions.core.usage.rollup``), never the ledger: a month of
ten million exchanges is a few thousand rollup rows, answered in milliseconds. The window
is whole hours (the rollup's grain), at most 366 days (31 when grouped by hour, so an
answer stays a few thousand rows). Counts and tokens equal the ledger's exactly; the
percentiles come from the histograms (within one √2-wide bucket).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.core.db.port import current_port
from functions.core.db.sql import fetch
from functions.core.errors import InvalidInputError
from functions.core.usage.rollup import LATENCY_COLUMNS, TTFT_COLUMNS, percentile
from functions.core.usage.schemas import (
    DIMENSIONS,
    Dimension,
    Percentiles,
    UsageGroup,
    UsageOut,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_WINDOW = timedelta(days=366)
MAX_HOURLY_WINDOW = timedelta(days=31)
DEFAULT_WINDOW = timedelta(days=1)
HOUR = timedelta(hours=1)
_STATUSES = ("complete", "failed", "cancelled")
_SUMS = ("requests", "prompt_tokens", "completion_tokens", *LATENCY_COLUMNS, *TTFT_COLUMNS)


def parse_time(text: str, field: str) -> datetime:
    """A window's end as given: RFC 3339 with a time zone (``2026-12-01T00:00:00Z``) or a
    date (``2026-12-01``, midnight UTC); a 400 naming ``field`` otherwise."""
    try:
        if len(text) == len("2026-12-01"):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{field} is not a time: give RFC 3339 with a time zone "
            "(2026-12-01T00:00:00Z) or a date (2026-12-01)",
            details={"field": field},
        ) from None
    if parsed.tzinfo is None:
        raise InvalidInputError(
            f"{field} needs a time zone (2026-12-01T00:00:00Z)", details={"field": field}
        )
    return parsed.astimezone(UTC)


def parse_group_by(text: str | None) -> list[Dimension]:
    """``key,day`` as dimensions, each once, in the order given (a 400 for another)."""
    if not text:
        return []
    chosen: list[Dimension] = []
    for name in text.split(","):
        dimension = next((d for d in DIMENSIONS if d == name.strip()), None)
        if dimension is None:
            raise InvalidInputError(
                f"group_by takes {', '.join(DIMENSIONS)} (comma-separated), not {name!r:.60}",
                details={"field": "group_by"},
            )
        if dimension not in chosen:
            chosen.append(dimension)
    return chosen


def window(
    since: datetime | None, until: datetime | None, hourly: bool
) -> tuple[datetime, datetime]:
    """The window asked for, checked: whole hours in UTC, ``to`` after ``from``, not too
    long. ``to`` defaults to the end of the current hour, ``from`` to a day before ``to``."""
    if until is None:
        until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + HOUR
    if since is None:
        since = until - DEFAULT_WINDOW
    for value, field in ((since, "from"), (until, "to")):
        if value.tzinfo is None:
            raise InvalidInputError(f"{field} needs a time zone", details={"field": field})
        if value.astimezone(UTC) != value.astimezone(UTC).replace(
            minute=0, second=0, microsecond=0
        ):
            raise InvalidInputError(
                f"{field} must be a whole hour (usage is kept per hour), such as "
                f"{value.astimezone(UTC):%Y-%m-%dT%H:00:00Z}",
                details={"field": field},
            )
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if until <= since:
        raise InvalidInputError("to must be after from", details={"field": "to"})
    longest = MAX_HOURLY_WINDOW if hourly else MAX_WINDOW
    if until - since > longest:
        raise InvalidInputError(
            f"the window is at most {longest.days} days"
            + (" when grouped by hour (group by day for longer)" if hourly else ""),
            details={"field": "from"},
        )
    return since, until


async def usage_totals(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Sequence[Dimension] = (),
    owner: uuid.UUID | None = None,
) -> UsageOut:
    """The finished exchanges asked in ``[since, until)`` (see :func:`window`), grouped by
    ``group_by``; ``owner`` keeps one key's only."""
    since, until = window(since, until, hourly="hour" in group_by)
    port = current_port()
    expressions: dict[str, str] = {
        "start": port.bucket_start("r.hour", "hour" if "hour" in group_by else "day"),
        "key": "r.owner_key",
        "config": "r.config_name",
        "config_version": "r.config_version",
        "model": "r.model",
        "upstream": "r.upstream",
    }
    wanted = [
        name
        for name in expressions
        if (name == "start" and ("hour" in group_by or "day" in group_by))
        or name in group_by
        or (name == "config" and "config_version" in group_by)
    ]
    keys = [*(f"{expressions[name]} AS g_{name}" for name in wanted), "r.status", "r.error_code"]
    sums = ", ".join(f"sum(r.{name}) AS {name}" for name in _SUMS)
    where = "r.hour >= {} AND r.hour < {}" + (" AND r.owner_key = {}" if owner else "")
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    rows = await fetch(
        f"SELECT {', '.join(keys)}, {sums} FROM usage_rollup r WHERE {where} "  # noqa: S608
        f"GROUP BY {positions} HAVING sum(r.requests) <> 0",
        since,
        until,
        *([owner] if owner else []),
    )
    groups: dict[tuple[Any, ...], _Group] = {}
    for row in rows:
        group_key = tuple(row[f"g_{name}"] for name in wanted)
        group = groups.get(group_key)
        if group is None:
            group = groups[group_key] = _Group(dict(zip(wanted, group_key, strict=True)))
        group.add(row)
    names = await _key_names() if "key" in group_by else {}
    data = sorted(
        (group.out(names) for group in groups.values()),
        key=lambda g: (
            g.start or since,
            g.key_name or "",
            str(g.key_id or ""),
            g.config or "",
            g.config_version or 0,
            g.model or "",
            g.upstream or "",
        ),
    )
    return UsageOut(from_=since, to=until, group_by=list(group_by), data=data)


class _Group:
    """One answer row being summed from the rollup's rows of its group."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.by_status = dict.fromkeys(_STATUSES, 0)
        self.errors: dict[str, int] = {}
        self.latency = [0] * len(LATENCY_COLUMNS)
        self.ttft = [0] * len(TTFT_COLUMNS)

    def add(self, row: dict[str, Any]) -> None:
        requests = int(row["requests"])
        self.requests += requests
        self.prompt_tokens += int(row["prompt_tokens"])
        self.completion_tokens += int(row["completion_tokens"])
        status = row["status"]
        self.by_status[status] = self.by_status.get(status, 0) + requests
        if code := row["error_code"]:
            self.errors[code] = self.errors.get(code, 0) + requests
        for k, column in enumerate(LATENCY_COLUMNS):
            self.latency[k] += int(row[column])
        for k, column in enumerate(TTFT_COLUMNS):
            self.ttft[k] += int(row[column])

    def out(self, names: dict[uuid.UUID, str]) -> UsageGroup:
        values = self.values
        key_id = uuid.UUID(str(values["key"])) if "key" in values else None
        version = values.get("config_version")
        start = values.get("start")
        return UsageGroup(
            start=_time(start) if start is not None else None,
            key_id=key_id,
            key_name=names.get(key_id) if key_id is not None else None,
            config=values.get("config") or None,
            config_version=int(version) if version else None,
            model=values.get("model") or None,
            upstream=values.get("upstream") or None,
            requests=self.requests,
            complete=self.by_status["complete"],
            failed=self.by_status["failed"],
            cancelled=self.by_status["cancelled"],
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            errors=dict(sorted(self.errors.items())),
            latency_ms=Percentiles(
                p50=percentile(self.latency, 0.5), p95=percentile(self.latency, 0.95)
            ),
            ttft_ms=Percentiles(p50=percentile(self.ttft, 0.5), p95=percentile(self.ttft, 0.95)),
        )


async def _key_names() -> dict[uuid.UUID, str]:
    rows = await fetch("SELECT id, name FROM api_key")
    return {uuid.UUID(str(row["id"])): row["name"] for row in rows}


def _time(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
