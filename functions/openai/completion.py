"""A chat completion's body, built from the stored reply (and vLLM's chunks as they came).

The non-streamed answer is assembled from the same events a stream relays: vLLM is always
read as a stream (so the timeouts and the time to first token mean what they say), and the
reply the send path stored is the answer's content, tool calls, finish reason and usage.
What only vLLM's chunks hold (the completion's id, ``created``, ``model``, logprobs,
reasoning) is gathered from them as they pass.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from functions.core.chat.schemas import MessageStarted
    from functions.core.llm.schemas import UpstreamEvent
    from functions.core.messages.schemas import MessageOut

_decode = msgspec.json.decode


def placement(started: MessageStarted) -> dict[str, str]:
    """Where an exchange was stored: the conversation, the last new turn (the user's
    message; the turns before it precede it in ``seq``) and the reply."""
    return {
        "conversation_id": str(started.assistant_message.conversation_id),
        "user_message_id": str(started.user_message.id),
        "reply_id": str(started.assistant_message.id),
    }


def placement_headers(started: MessageStarted) -> dict[str, str]:
    """The same, as response headers (a stream's body has no room for it)."""
    return {
        "X-Switchboard-Conversation": str(started.assistant_message.conversation_id),
        "X-Switchboard-User-Message-Id": str(started.user_message.id),
        "X-Switchboard-Reply-Id": str(started.assistant_message.id),
    }


class ChunkSummary:
    """What every non-streamed answer takes from vLLM's chunks: the first chunk's id, time
    and model, and the finishing chunk's ``stop_reason``. A chunk is decoded again only
    where the summary lacks something: the first, the finishing one, and (``every``, when
    the client asked for something each chunk carries) every one."""

    __slots__ = ("created", "id", "model", "stop_reason")

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.stop_reason: Any = None

    def _read(self, event: UpstreamEvent, *, every: bool) -> dict[str, Any] | None:
        """``event``'s chunk decoded, the summary's part taken from it; None when it need
        not be read."""
        first = self.id is None
        if not (first or every or event.finish_reason is not None):
            return None
        chunk = _decode(event.raw)
        if not isinstance(chunk, dict):
            return None
        if first:
            self.id = chunk.get("id")
            self.created = chunk.get("created")
            self.model = chunk.get("model")
        if event.finish_reason is not None:
            for choice in chunk.get("choices") or ():
                self.stop_reason = choice.get("stop_reason")
        return chunk


class ChunkFacts(ChunkSummary):
    """A chat completion's: the summary, the reasoning text, and (only when asked for)
    the logprobs."""

    __slots__ = ("logprobs", "reasoning", "wants_logprobs")

    def __init__(self, *, wants_logprobs: bool) -> None:
        super().__init__()
        self.wants_logprobs = wants_logprobs
        self.reasoning: list[str] = []
        self.logprobs: list[Any] = []

    def add(self, event: UpstreamEvent) -> None:
        if event.reasoning:
            self.reasoning.append(event.reasoning)
        chunk = self._read(event, every=self.wants_logprobs)
        if chunk is None or not self.wants_logprobs:
            return
        for choice in chunk.get("choices") or ():
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                self.logprobs += logprobs.get("content") or ()


def completion_body(
    reply: MessageOut, started: MessageStarted, facts: ChunkFacts | None
) -> dict[str, Any]:
    """``chat.completion`` for a stored reply, as vLLM shapes it."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.content if reply.content or not reply.tool_calls else None,
    }
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    if facts is not None and facts.reasoning:
        message["reasoning"] = "".join(facts.reasoning)
    usage = reply.usage
    logprobs = {"content": facts.logprobs} if facts is not None and facts.wants_logprobs else None
    return {
        "id": (facts.id if facts and facts.id else None) or f"chatcmpl-{reply.id.hex}",
        "object": "chat.completion",
        "created": (facts.created if facts and facts.created else None)
        or int(reply.created_at.timestamp()),
        "model": (facts.model if facts and facts.model else None) or reply.model or "",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": reply.finish_reason,
                "stop_reason": facts.stop_reason if facts else None,
            }
        ],
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "switchboard": placement(started),
    }


def replayed_chunks(reply: MessageOut, *, include_usage: bool) -> list[dict[str, Any]]:
    """A stored reply as stream chunks (a send replayed by its ``Idempotency-Key`` has no
    upstream events to relay): the whole delta, the finish, and the usage if asked."""
    base = {
        "id": f"chatcmpl-{reply.id.hex}",
        "object": "chat.completion.chunk",
        "created": int(reply.created_at.timestamp()) if reply.created_at else int(time.time()),
        "model": reply.model or "",
    }
    delta: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        delta["tool_calls"] = [
            {"index": index, **call} for index, call in enumerate(reply.tool_calls)
        ]
    chunks: list[dict[str, Any]] = [
        {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
        },
    ]
    if include_usage and reply.usage is not None:
        usage = reply.usage
        chunks.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
            }
        )
    return chunks
