"""Conversations: a key's chat threads."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from functions.core.configs.schemas import ConfigName
from functions.core.schemas import Input, Output

Title = Annotated[str, Meta(max_length=500, examples=["Quarterly report draft"])]
Metadata = Annotated[
    dict[str, Any],
    Meta(
        description="Free-form JSON object, at most 16 KiB encoded.",
        examples=[{"team": "support", "ticket": "SUP-1042"}],
    ),
]


class ConversationCreate(Input, kw_only=True):
    title: Title = ""
    config: ConfigName | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class ConversationUpdate(Input, kw_only=True):
    """Only the fields present are changed; ``config: null`` falls back to the default."""

    title: Title | UnsetType = UNSET
    config: ConfigName | UnsetType | None = UNSET
    metadata: Metadata | UnsetType = UNSET


class ConversationOut(Output, kw_only=True):
    id: uuid.UUID
    title: str
    config: str | None
    metadata: dict[str, Any]
    message_count: int
    created_at: datetime
    updated_at: datetime
    # A branch (an OpenAI door's resend that found its conversation moved on): the
    # conversation and message its history was taken from; null for any other.
    forked_from_conversation_id: uuid.UUID | None = None
    forked_from_message_id: uuid.UUID | None = None
