"""OpenAI's list pages, as the door's list routes answer them: the query parameters
(``after``, ``limit``, ``order``) and the envelope (``object: "list"``, ``data``,
``first_id``, ``last_id``, ``has_more``). One definition for Responses' input items,
Conversations' items and stored chat completions (and their messages)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar.params import QueryParameter

Order = Literal["asc", "desc"]
After = Annotated[
    str | None, QueryParameter(max_length=100, description="The id of the last object seen")
]
Limit = Annotated[int, QueryParameter(ge=1, le=100, description="Page size, 1 to 100")]
OrderBy = Annotated[Order, QueryParameter(description="asc or desc")]


def page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """The list envelope of ``data`` (objects with an ``id``)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
