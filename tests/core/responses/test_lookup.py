"""A response is found by its reply's primary key, owner-checked in the same statement:
``previous_response_id`` costs one index lookup whatever the length of the chain."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine

from functions.core.db.sql import fetch
from functions.core.responses import service as responses
from functions.core.responses.service import _PREVIOUS, _REPLY


@pytest.mark.parametrize("statement", [_PREVIOUS, _REPLY], ids=["previous", "retrieve"])
async def test_the_lookup_is_by_primary_key(db: Engine[Any], statement: str) -> None:
    reply_id, owner = uuid.uuid4(), uuid.uuid4()
    if isinstance(db, PostgresEngine):
        # Empty tables: the planner would read them whole, so it is told not to, to show
        # which index serves the lookup.
        await fetch("SET LOCAL enable_seqscan = off")
        plan = await fetch("EXPLAIN " + statement, reply_id, owner)
        text = "\n".join(row["QUERY PLAN"] for row in plan)
        assert "Seq Scan" not in text, text
        assert "message_pkey" in text, text
    else:
        plan = await fetch("EXPLAIN QUERY PLAN " + statement, reply_id, owner)
        lines = [str(row["detail"]) for row in plan]
        text = "\n".join(lines)
        assert not any(line.startswith(("SCAN m", "SCAN c", "SCAN a")) for line in lines), text
        assert any(line.startswith("SEARCH m USING INDEX") for line in lines), text
    # Nobody's response, a malformed id (None) and another key's cost the same statement.
    assert await responses.get_response(owner, reply_id) is None
    assert await responses.get_response(owner, None) is None
    assert await responses.previous_of(owner, reply_id) is None
