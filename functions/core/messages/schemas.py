"""Messages: the turns of a conversation and how each reply was produced."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec

from functions.core.configs.schemas import LLMConfigOut
from functions.core.schemas import Output

Role = Literal["system", "user", "assistant"]
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


class ChatTurn(msgspec.Struct, frozen=True):
    """One entry of the prompt sent to the model (OpenAI message shape)."""

    role: Role
    content: str


class Exchange(Output, kw_only=True):
    """What :func:`begin_exchange` stored, and the history the model should see."""

    user_message: MessageOut
    assistant_message: MessageOut
    history: list[ChatTurn]
    config: LLMConfigOut


class ReplyOutcome(msgspec.Struct, kw_only=True):
    """How a model call ended, to be written onto the pending assistant message."""

    status: Status
    content: str = ""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    upstream_request_id: str | None = None
