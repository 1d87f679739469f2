"""A non-streamed ``text_completion`` body, built from the stored reply and vLLM's chunks.

As for chat (``completion.py``), vLLM is read as a stream even for a non-streamed answer;
the stored reply is its text (with ``echo``, the prompt's text before the completion, as
vLLM answers), finish reason and usage. What only the chunks hold (the completion's id,
``created``, ``model``, ``stop_reason``, the logprobs and token ids when asked for) is
gathered from them as they pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from functions.openai.completion import ChunkSummary, placement

if TYPE_CHECKING:
    from functions.core.chat.schemas import MessageStarted, ReplyDone
    from functions.core.llm.schemas import UpstreamEvent
    from functions.core.messages.schemas import MessageOut

# vLLM's completion logprobs: four parallel lists, one entry per token, each chunk holding
# its tokens'. A stream's ``text_offset`` counts from the start of the generated text only
# (the echoed prompt's chunk from its own start), a whole answer's from the start of its
# text: so the offsets are counted again from the tokens, as vLLM counts them for a whole
# answer (each the previous one plus the previous token's length).
LOGPROB_LISTS = ("text_offset", "token_logprobs", "tokens", "top_logprobs")


class CompletionFacts(ChunkSummary):
    """What a non-streamed completion needs from vLLM's chunks (see the module docstring)."""

    __slots__ = (
        "logprobs",
        "prompt_logprobs",
        "prompt_token_ids",
        "token_ids",
        "wants_every_chunk",
    )

    def __init__(self, *, wants_every_chunk: bool) -> None:
        super().__init__()
        # Logprobs or token ids asked for: every chunk is read, not only the first and last.
        self.wants_every_chunk = wants_every_chunk
        self.logprobs: dict[str, list[Any]] | None = None
        self.token_ids: list[int] | None = None
        self.prompt_token_ids: Any = None
        self.prompt_logprobs: Any = None

    def add(self, event: UpstreamEvent) -> None:
        if event.usage_only:
            return
        first = self.id is None
        chunk = self._read(event, every=self.wants_every_chunk)
        if chunk is None:
            return
        for choice in chunk.get("choices") or ():
            if first:
                self.prompt_token_ids = choice.get("prompt_token_ids")
                self.prompt_logprobs = choice.get("prompt_logprobs")
            if isinstance(logprobs := choice.get("logprobs"), dict):
                self._add_logprobs(logprobs)
            if isinstance(token_ids := choice.get("token_ids"), list):
                self.token_ids = [*(self.token_ids or ()), *token_ids]

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        if self.logprobs is None:
            self.logprobs = {name: [] for name in LOGPROB_LISTS}
        merged = self.logprobs
        offsets = merged["text_offset"]
        tokens = merged["tokens"]
        for token in logprobs.get("tokens") or ():
            if offsets:
                offsets.append(offsets[-1] + len(tokens[len(offsets) - 1] or ""))
            else:
                offsets.append((logprobs.get("text_offset") or [0])[0])
            tokens.append(token)
        for name in ("token_logprobs", "top_logprobs"):
            merged[name] += logprobs.get(name) or ()


def text_completion_body(
    done: ReplyDone, started: MessageStarted, facts: CompletionFacts
) -> dict[str, Any]:
    """``text_completion`` for a stored reply, as vLLM shapes it, and where it is stored."""
    reply = done.message
    usage = reply.usage
    choice: dict[str, Any] = {
        "index": 0,
        "text": reply.content,
        "logprobs": facts.logprobs,
        "finish_reason": reply.finish_reason,
        "stop_reason": facts.stop_reason,
        "prompt_logprobs": facts.prompt_logprobs,
    }
    if facts.prompt_token_ids is not None or facts.token_ids is not None:
        choice["prompt_token_ids"] = facts.prompt_token_ids
        choice["token_ids"] = facts.token_ids
    return {
        "id": facts.id or f"cmpl-{reply.id.hex}",
        "object": "text_completion",
        "created": facts.created or int(reply.created_at.timestamp()),
        "model": facts.model or reply.model or "",
        "choices": [choice],
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "switchboard": placement(started),
    }


def replayed_completion_chunks(reply: MessageOut, *, include_usage: bool) -> list[dict[str, Any]]:
    """A stored reply as ``text_completion`` stream chunks (a send replayed by its
    ``Idempotency-Key`` has no upstream events to relay): the whole text, the finish, and
    the usage if asked."""
    base = {
        "id": f"cmpl-{reply.id.hex}",
        "object": "text_completion",
        "created": int(reply.created_at.timestamp()),
        "model": reply.model or "",
    }

    def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }

    chunks = [
        {**base, "choices": [choice(reply.content, None)]},
        {**base, "choices": [choice("", reply.finish_reason)]},
    ]
    if include_usage and (usage := reply.usage) is not None:
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
