"""Sending a message and the events of a streamed reply."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from functions.core.configs.schemas import (
    SAMPLING_FIELDS,
    MaxTokens,
    Seed,
    StopList,
    Temperature,
    TopP,
)
from functions.core.messages.schemas import MessageOut
from functions.core.schemas import Input, Output

MAX_CONTENT_CHARS = 400_000


class MessageSend(Input, kw_only=True):
    """The user's message; sampling fields override the conversation's config for this reply."""

    content: Annotated[
        str, Meta(min_length=1, max_length=MAX_CONTENT_CHARS, examples=["Summarise our Q3 plan."])
    ]
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    stop: StopList | None = None
    seed: Seed | None = None

    def overrides(self) -> dict[str, Any]:
        return {
            name: value for name in SAMPLING_FIELDS if (value := getattr(self, name)) is not None
        }


class MessageStarted(Output, kw_only=True, tag="message"):
    """Both messages are stored; the reply is ``pending`` until ``done`` or ``error``."""

    user_message: MessageOut
    assistant_message: MessageOut


class ReplyDelta(Output, kw_only=True, tag="delta"):
    text: str


class ReplyDone(Output, kw_only=True, tag="done"):
    """The stored, complete reply (content, usage, timings, config version)."""

    message: MessageOut


class ReplyFailed(Output, kw_only=True, tag="error"):
    """The reply failed; ``message`` is the stored assistant message (status ``failed``)."""

    error: dict[str, Any]
    message: MessageOut


ChatEvent = MessageStarted | ReplyDelta | ReplyDone | ReplyFailed


def event_name(event: ChatEvent) -> str:
    """The SSE event name: the Struct's tag (``message``, ``delta``, ``done``, ``error``)."""
    return str(type(event).__struct_config__.tag)
