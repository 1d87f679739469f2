"""Messages: the turns of a conversation and how each reply was produced."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from functions.core.configs.schemas import LLMConfigOut
from functions.core.schemas import Output

Role = Literal["system", "developer", "user", "assistant", "tool"]
Status = Literal["pending", "complete", "failed", "cancelled"]


class Usage(Output, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ConfigRef(Output, kw_only=True):
    id: uuid.UUID
    name: str
    version: int


class MessageError(Output, kw_only=True):
    code: str
    message: str


class MessageOut(Output, kw_only=True):
    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    role: Role
    content: str
    # Set only for turns that carry more than text (OpenAI content parts and tool calling).
    content_parts: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    status: Status
    config: ConfigRef | None = None
    model: str | None = None
    usage: Usage | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    finish_reason: str | None = None
    error: MessageError | None = None
    upstream_request_id: str | None = None
    created_at: datetime
    completed_at: datetime | None = None


class Turn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One turn of a conversation as the model sees it (OpenAI's message shape).

    ``content`` is the text; a turn sent as content parts keeps them in ``parts`` (and
    their text, joined, in ``content``). Tool calling uses ``tool_calls`` on an assistant
    turn and ``tool_call_id`` on the ``tool`` turn that answers it.
    """

    role: Role
    content: str = ""
    parts: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StoredTurn(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message as the prompt rule reads it: the turn, its place and its status."""

    seq: int
    status: Status
    turn: Turn


class Exchange(Output, kw_only=True):
    """What a claim stored (the new turns and a pending reply) and the prompt to send."""

    turns: list[MessageOut]
    assistant_message: MessageOut
    prompt: list[Turn]
    config: LLMConfigOut | None
    model: str | None
    # The process generating the reply (its lease), which alone may finish it.
    instance_id: uuid.UUID | None = None
    # The key the exchange is charged to (the conversation's owner): the usage ledger's.
    owner: uuid.UUID | None = None
    # A threaded send's last chain hash: the reply's is chained onto it when it completes.
    chain_parent: bytes | None = None

    @property
    def user_message(self) -> MessageOut:
        """The last turn stored by this exchange (the user's message, for chat)."""
        return self.turns[-1]


class ReplyOutcome(msgspec.Struct, kw_only=True):
    """How a model call ended, to be written onto the pending assistant message (and into
    the usage ledger). ``tool_calls``: the reply's tool calls, whole or, for a reply cut
    short, as far as they arrived; ``upstream``: the vLLM server that answered (its URL
    without credentials), for the ledger."""

    status: Status
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    upstream_request_id: str | None = None
    upstream: str | None = None
    # A threaded reply's chain hash (complete replies only: ``functions.core.threads``).
    chain_hash: bytes | None = None
