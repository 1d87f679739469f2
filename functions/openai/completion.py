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
    from functions.core.chat.schemas import MessageStarted, ReplyDone
    from functions.core.llm.schemas import UpstreamEvent
    from functions.core.messages.schemas import MessageOut

_decode = msgspec.json.decode


def _where(user_message: MessageOut, reply: MessageOut) -> dict[str, str]:
    return {
        "conversation_id": str(reply.conversation_id),
        "user_message_id": str(user_message.id),
        "reply_id": str(reply.id),
    }


def placement(started: MessageStarted) -> dict[str, Any]:
    """Where an exchange was stored: the conversation, the last new turn (the user's
    message; the turns before it precede it in ``seq``) and the reply; with ``n`` > 1,
    ``choices`` says the same of every choice, in order (the first is the above, each
    further one in its branch)."""
    where: dict[str, Any] = _where(started.user_message, started.assistant_message)
    if started.choices:
        where["choices"] = [
            dict(where),
            *(_where(choice.user_message, choice.assistant_message) for choice in started.choices),
        ]
    return where


def completion_id(started: MessageStarted) -> str:
    """A chat completion's id: ``chatcmpl-`` and its (first) reply's UUID hex."""
    return f"chatcmpl-{started.assistant_message.id.hex}"


def chunk_id(started: MessageStarted) -> bytes:
    """The same, as a relayed chunk carries it."""
    return completion_id(started).encode()


def placement_headers(started: MessageStarted) -> dict[str, str]:
    """The same, as response headers (a stream's body has no room for it): every choice's
    conversation and reply, comma-separated in order, when there are several."""
    headers = {
        "X-Switchboard-Conversation": str(started.assistant_message.conversation_id),
        "X-Switchboard-User-Message-Id": str(started.user_message.id),
        "X-Switchboard-Reply-Id": str(started.assistant_message.id),
    }
    if started.choices:
        replies = [started.assistant_message, *(c.assistant_message for c in started.choices)]
        headers["X-Switchboard-Choice-Conversations"] = ",".join(
            str(reply.conversation_id) for reply in replies
        )
        headers["X-Switchboard-Choice-Reply-Ids"] = ",".join(str(reply.id) for reply in replies)
    return headers


class ChunkSummary:
    """What every non-streamed answer takes from vLLM's chunks: the first chunk's id, time
    and model, and each choice's finishing chunk's ``stop_reason`` (by ``index``). A chunk
    is decoded again only where the summary lacks something: the first, a finishing one,
    and (``every``, when the client asked for something each chunk carries) every one."""

    __slots__ = ("created", "id", "model", "stop_reasons")

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.stop_reasons: dict[int, Any] = {}

    @property
    def stop_reason(self) -> Any:
        """The first choice's."""
        return self.stop_reasons.get(0)

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
                self.stop_reasons[choice.get("index", 0)] = choice.get("stop_reason")
        return chunk


class ChunkFacts(ChunkSummary):
    """A chat completion's: the summary, and each choice's reasoning text and (only when
    asked for) logprobs, by ``index``."""

    __slots__ = ("logprobs", "reasoning", "wants_logprobs")

    def __init__(self, *, wants_logprobs: bool) -> None:
        super().__init__()
        self.wants_logprobs = wants_logprobs
        self.reasoning: dict[int, list[str]] = {}
        self.logprobs: dict[int, list[Any]] = {}

    def add(self, event: UpstreamEvent) -> None:
        if event.reasoning:
            self.reasoning.setdefault(event.index, []).append(event.reasoning)
        chunk = self._read(event, every=self.wants_logprobs)
        if chunk is None or not self.wants_logprobs:
            return
        for choice in chunk.get("choices") or ():
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                self.logprobs.setdefault(choice.get("index", 0), []).extend(
                    logprobs.get("content") or ()
                )


def _choice(index: int, reply: MessageOut, facts: ChunkFacts | None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.content if reply.content or not reply.tool_calls else None,
    }
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    if facts is not None and (reasoning := facts.reasoning.get(index)):
        message["reasoning"] = "".join(reasoning)
    wants_logprobs = facts is not None and facts.wants_logprobs
    return {
        "index": index,
        "message": message,
        "logprobs": {"content": facts.logprobs.get(index, [])}
        if facts is not None and wants_logprobs
        else None,
        "finish_reason": reply.finish_reason,
        "stop_reason": facts.stop_reasons.get(index) if facts else None,
    }


def _usage(replies: list[MessageOut]) -> dict[str, int] | None:
    """The request's usage: its choices' stored shares added up (the prompt is counted on
    the first choice only, so the sum is vLLM's own usage)."""
    usages = [reply.usage for reply in replies]
    if any(usage is None for usage in usages):
        first = usages[0]
        return None if first is None else _usage_body(first.prompt_tokens, first.completion_tokens)
    prompt = sum(usage.prompt_tokens for usage in usages if usage is not None)
    completion = sum(usage.completion_tokens for usage in usages if usage is not None)
    return _usage_body(prompt, completion)


def _usage_body(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(
    done: ReplyDone, started: MessageStarted, facts: ChunkFacts | None
) -> dict[str, Any]:
    """``chat.completion`` for a stored reply (and an ``n`` > 1 send's further choices),
    as vLLM shapes it."""
    reply = done.message
    replies = [reply, *done.choices]
    return {
        # The stored reply's id, as a stream's chunks carry it: the id a client reads is
        # one it can look up (``GET /v1/chat/completions/{id}``), whatever vLLM named it.
        "id": completion_id(started),
        "object": "chat.completion",
        "created": (facts.created if facts and facts.created else None)
        or int(reply.created_at.timestamp()),
        "model": (facts.model if facts and facts.model else None) or reply.model or "",
        "choices": [_choice(index, choice, facts) for index, choice in enumerate(replies)],
        "usage": _usage(replies),
        "switchboard": placement(started),
    }


def replayed_chunks(done: ReplyDone, *, include_usage: bool) -> list[dict[str, Any]]:
    """A stored reply (and an ``n`` > 1 send's further choices) as stream chunks (a send
    replayed by its ``Idempotency-Key`` has no upstream events to relay): each choice's
    whole delta and its finish, then the usage if asked."""
    reply = done.message
    base = {
        "id": f"chatcmpl-{reply.id.hex}",
        "object": "chat.completion.chunk",
        "created": int(reply.created_at.timestamp()) if reply.created_at else int(time.time()),
        "model": reply.model or "",
    }
    replies = [reply, *done.choices]
    chunks: list[dict[str, Any]] = []
    for index, choice in enumerate(replies):
        delta: dict[str, Any] = {"role": "assistant", "content": choice.content}
        if choice.tool_calls:
            delta["tool_calls"] = [
                {"index": number, **call} for number, call in enumerate(choice.tool_calls)
            ]
        chunks.append(
            {
                **base,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                ],
            }
        )
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "index": index,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": choice.finish_reason,
                    }
                ],
            }
        )
    if include_usage and (usage := _usage(replies)) is not None:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks
