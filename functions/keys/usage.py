"""``GET /v1/usage``: requests, tokens, errors and latency over a window, grouped.

Served by the keys function (an operator's view of keys and what they used): an admin key
sees every key's usage, any other key its own. Read from the usage rollup
(``functions.core.usage.totals``), so a month of history answers at once.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from functions.core.keys.schemas import Principal
from functions.core.usage.schemas import DIMENSIONS, UsageOut
from functions.core.usage.totals import parse_group_by, parse_time, usage_totals
from functions.core.web.auth import provide_principal
from functions.core.web.docs import errors
from functions.core.web.policy import SWITCHBOARD

_TIME = (
    "a whole hour, RFC 3339 with a time zone (`2026-12-01T00:00:00Z`), or a date "
    "(`2026-12-01`, midnight UTC)"
)


@get("/", summary="Usage: requests, tokens, errors and latency", responses=errors(400))
async def get_usage(
    principal: NamedDependency[Principal],
    from_: Annotated[
        str | None, QueryParameter(name="from", max_length=40, description=f"Start: {_TIME}")
    ] = None,
    to: Annotated[
        str | None, QueryParameter(max_length=40, description=f"End (excluded): {_TIME}")
    ] = None,
    group_by: Annotated[
        str | None,
        QueryParameter(
            max_length=200,
            description=f"Comma-separated, any of: {', '.join(DIMENSIONS)}; none: the totals",
        ),
    ] = None,
) -> UsageOut:
    """The exchanges asked in ``[from, to)`` (whole hours; ``to`` defaults to the end of
    this hour, ``from`` to a day before ``to``; at most 366 days, 31 by hour): requests by
    status, tokens, errors by code, and latency and time to first token p50/p95 of the
    completed replies. An admin key sees every key's; another key its own."""
    return await usage_totals(
        since=parse_time(from_, "from") if from_ is not None else None,
        until=parse_time(to, "to") if to is not None else None,
        group_by=parse_group_by(group_by),
        owner=None if principal.is_admin else principal.key_id,
    )


# Switchboard's own API: its error shape, unknown parameters refused.
router = SWITCHBOARD.router(
    path="/v1/usage",
    route_handlers=[get_usage],
    dependencies={"principal": Provide(provide_principal)},
    tags=["usage"],
    security=[{"BearerAuth": []}],
)
