"""The send path's not-stored mode, streamed (``ChatService.stream_unstored``, a Responses
``store: false`` with ``stream``): the text as it arrives, then how vLLM finished; the
hooks see it once; the key's access is checked before anything is asked; nothing is
stored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.chat.schemas import ReplyDelta, SendRequest
from functions.core.chat.service import ChatService
from functions.core.db.sql import fetch
from functions.core.errors import ModelNotAllowedError
from functions.core.keys.schemas import UNRESTRICTED, KeyAccess
from functions.core.llm.schemas import ChatDone
from functions.core.messages.schemas import Turn
from tests.core.chat.conftest import MakeClient
from tests.core.replay.test_unsaved_pipeline import Books
from tests.support.simulator import SimulatorProcess


def _request(access: KeyAccess) -> SendRequest:
    return SendRequest(
        owner=uuid.uuid4(),
        access=access,
        conversation_id=uuid.UUID(int=0),
        turns=[Turn(role="user", content="Hi")],
        prompt="exact",
        messages=[Turn(role="user", content="Hi")],
    )


async def test_streamed_whole_and_nothing_stored(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    books = Books()
    chat = ChatService(make_client(sim.base_url), hooks=books)
    events = [
        event
        async for event in chat.stream_unstored(_request(UNRESTRICTED), None, model="sim-model")
    ]
    assert isinstance(events[-1], ChatDone)
    assert events[-1].finish_reason is not None
    assert "".join(e.text for e in events if isinstance(e, ReplyDelta))
    assert [kind for kind, _, reply in books.events if reply is None] == ["admit", "reconcile"]
    assert (await fetch("SELECT count(*) AS n FROM message"))[0]["n"] == 0


async def test_a_model_the_key_may_not_use_is_refused_before_admit(
    db: Engine[Any], sim: SimulatorProcess, make_client: MakeClient
) -> None:
    books = Books()
    chat = ChatService(make_client(sim.base_url), hooks=books)
    only_other = KeyAccess(models=frozenset({"other-model"}))
    with pytest.raises(ModelNotAllowedError):
        async for _ in chat.stream_unstored(_request(only_other), None, model="sim-model"):
            pass
    assert books.events == []
