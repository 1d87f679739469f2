"""Threading fixtures: the send path's simulator and clients (``tests.core.chat``), and a
client that resends its whole history every turn, as chat applications do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from functions.core.chat.schemas import SendRequest
from functions.core.chat.service import ChatService
from functions.core.chat.targets import Target
from functions.core.db.sql import fetch
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.messages.schemas import MessageOut, Turn
from functions.core.threads import service as threads
from tests.core.chat.conftest import chat_simulator, faults, make_client, sim

__all__ = ["chat_simulator", "faults", "make_client", "sim"]


def user(text: str) -> Turn:
    return Turn(role="user", content=text)


def as_resent(reply: MessageOut) -> Turn:
    """A stored reply as a client sends it back."""
    return Turn(role="assistant", content=reply.content, tool_calls=reply.tool_calls)


async def resend(
    chat: ChatService, owner: uuid.UUID, config: str, history: list[Turn]
) -> MessageOut:
    """One turn of an application that sends its whole history: placed, then sent."""
    request = SendRequest(
        access=UNRESTRICTED,
        owner=owner,
        turns=history,
        prompt="exact",
        target=Target(config=config),
    )
    return await chat.send(await threads.threaded(request))


@dataclass
class Client:
    """A chat application: its key, its configuration and the history it keeps."""

    chat: ChatService
    owner: uuid.UUID
    config: str
    history: list[Turn] = field(default_factory=list)

    async def says(self, text: str) -> MessageOut:
        self.history.append(user(text))
        reply = await resend(self.chat, self.owner, self.config, self.history)
        self.history.append(as_resent(reply))
        return reply


async def conversation_rows(owner: uuid.UUID) -> list[dict[str, Any]]:
    """The owner's conversations, oldest first, with their fork points."""
    return await fetch(
        "SELECT id, last_seq, forked_from_conversation_id, forked_from_message_id "
        "FROM conversation WHERE owner_key = {} ORDER BY created_at, last_seq",
        owner,
    )


async def message_rows(conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    return await fetch(
        "SELECT id, seq, role, content, status, chain_hash FROM message "
        "WHERE conversation = {} ORDER BY seq",
        conversation_id,
    )
