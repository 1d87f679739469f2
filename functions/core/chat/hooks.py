"""The send path's two hooks around every exchange: ``admit`` before the claim and
``reconcile`` after the record.

They are where quotas will reserve (refusing a send before anything is stored) and
refund (charging what the reply really used). Every door that sends through
``ChatService`` passes both, once per exchange, so a hook never needs to know which door
sent. By default they do nothing.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

import msgspec

from functions.core.chat.targets import Target

if TYPE_CHECKING:
    from functions.core.chat.schemas import SendRequest
    from functions.core.messages.schemas import MessageOut


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """An exchange about to be claimed: who sends, what it targets, how big it is.

    ``chars`` counts the new turns' text (the prompt's stored history is not known before
    the claim reads it); ``max_tokens`` is the reply's bound when the send sets one.
    """

    owner: uuid.UUID
    conversation_id: uuid.UUID
    target: Target
    turns: int
    chars: int
    max_tokens: int | None
    request_id: str | None


class ExchangeHooks(Protocol):
    """What the send path calls around each exchange (see the module docstring)."""

    async def admit(self, admission: Admission) -> None:
        """Before the claim; raise a ``SwitchboardError`` to refuse the send (nothing is
        stored, the client gets its status)."""

    async def reconcile(self, admission: Admission, reply: MessageOut | None) -> None:
        """Once the exchange has ended, however it ended: ``reply`` is the stored reply
        (its final status and usage), or None when nothing was recorded (the claim was
        refused, the conversation was deleted, the database did not take the outcome)."""


class NoHooks:
    """The default: admit every exchange, reconcile nothing."""

    async def admit(self, admission: Admission) -> None:
        return None

    async def reconcile(self, admission: Admission, reply: MessageOut | None) -> None:
        return None


def admission(request: SendRequest, conversation_id: uuid.UUID) -> Admission:
    """The admission of ``request`` in ``conversation_id`` (its new turns and bound)."""
    max_tokens = request.sampling.get("max_tokens")
    return Admission(
        owner=request.owner,
        conversation_id=conversation_id,
        target=request.target,
        turns=len(request.turns),
        chars=sum(len(turn.content) for turn in request.turns),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        request_id=request.request_id,
    )
