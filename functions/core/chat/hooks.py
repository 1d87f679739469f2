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
from functions.core.messages.schemas import Turn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.chat.schemas import SendRequest
    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.messages.schemas import MessageOut


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """An exchange about to be claimed: who sends, what it targets, how big it is.

    ``chars`` counts the prompt's text as known before the claim: the whole prompt when
    the door sends it (``SendRequest.messages``), else the new turns and the
    configuration's system prompt. ``history``: the claim adds the conversation's stored
    history to the prompt (chat), which only the claim reads; a hook that needs its size
    asks the store (the limiter reads the last reply's counts, see ``limits.limiter``).
    ``max_tokens`` is the reply's bound when the send sets one, else ``config_max_tokens``
    (the configuration's). ``config``: the configuration's name (None: a bare model) and
    ``config_max_concurrent`` its concurrency cap.
    """

    owner: uuid.UUID
    conversation_id: uuid.UUID | None
    target: Target
    turns: int
    chars: int
    max_tokens: int | None
    request_id: str | None
    history: bool = False
    config: str | None = None
    config_max_tokens: int | None = None
    config_max_concurrent: int | None = None
    # The whole prompt when the door sends it (for counting it exactly), and the model.
    prompt: list[Turn] | None = None
    model: str | None = None
    # How many replies vLLM is asked for (OpenAI's ``n``): each may use ``max_tokens``.
    choices: int = 1


class ExchangeHooks(Protocol):
    """What the send path calls around each exchange (see the module docstring)."""

    async def admit(self, admission: Admission) -> None:
        """Before the claim; raise a ``SwitchboardError`` to refuse the send (nothing is
        stored, the client gets its status)."""

    async def reconcile(
        self,
        admission: Admission,
        reply: MessageOut | None,
        *,
        generated: bool = True,
        others: Sequence[MessageOut] = (),
    ) -> None:
        """Once the exchange has ended, however it ended: ``reply`` is the stored reply
        (its final status and usage), or None when nothing was recorded (the claim was
        refused, the conversation was deleted, the database did not take the outcome, an
        unstored send). ``generated``: False when the model was never asked (the claim
        was refused), so nothing was spent. ``others``: the further choices of an ``n`` >
        1 send, as stored (their usage is their own completion tokens)."""


class NoHooks:
    """The default: admit every exchange, reconcile nothing."""

    async def admit(self, admission: Admission) -> None:
        return None

    async def reconcile(
        self,
        admission: Admission,
        reply: MessageOut | None,
        *,
        generated: bool = True,
        others: Sequence[MessageOut] = (),
    ) -> None:
        return None


def admission(
    request: SendRequest,
    conversation_id: uuid.UUID | None,
    config: LLMConfigOut | None = None,
    *,
    model: str | None = None,
) -> Admission:
    """The admission of ``request`` in ``conversation_id`` (None: a conversation the send
    will start), answered by ``config`` (its new turns, or its whole prompt when the door
    sends it, and its bound)."""
    max_tokens = request.sampling.get("max_tokens")
    history = (
        request.prompt == "history" and request.messages is None and conversation_id is not None
    )
    if request.messages is not None:
        chars = sum(len(turn.content) for turn in request.messages)
        turns = len(request.messages)
    else:
        chars = sum(len(turn.content) for turn in request.turns)
        turns = len(request.turns)
        if history and config is not None and config.system_prompt:
            chars += len(config.system_prompt)
            turns += 1
    return Admission(
        owner=request.owner,
        conversation_id=conversation_id,
        target=request.target,
        turns=turns,
        chars=chars,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        request_id=request.request_id,
        history=history,
        config=config.name if config is not None else None,
        config_max_tokens=config.max_tokens if config is not None else None,
        config_max_concurrent=config.max_concurrent if config is not None else None,
        prompt=request.messages,
        choices=request.choices,
        model=model or (config.model if config is not None else request.target.model),
    )
