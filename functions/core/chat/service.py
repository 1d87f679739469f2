"""Sending a message: store first, call the model, record how it ended.

The write path never loses a message (see ``functions.core.messages.service``): the user's
message and a pending reply are committed before vLLM is called; whatever happens next
(success, an upstream error, a timeout, the client going away) is written onto that reply
in a shielded step that a cancellation cannot interrupt.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import TYPE_CHECKING

import anyio

from functions.core.chat.locks import ConversationLocks
from functions.core.chat.schemas import (
    ChatEvent,
    MessageSend,
    MessageStarted,
    ReplyDelta,
    ReplyDone,
    ReplyFailed,
)
from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import ChatDelta, ChatDone, ChatMessage, ChatRequest, ChatResult
from functions.core.logging import get_logger
from functions.core.messages import service as messages
from functions.core.messages.schemas import ConfigRef, Exchange, MessageOut, ReplyOutcome
from functions.core.messages.service import ConversationBusyError
from functions.core.metrics import CHAT_MESSAGES, LLM_DURATION, LLM_REQUESTS, LLM_TOKENS, LLM_TTFT

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.llm.client import LLMClient

log = get_logger(__name__)
BUSY_RETRY_S = 0.05


class ChatService:
    """Sends messages for one process; shared by every request (it holds the locks)."""

    def __init__(self, llm: LLMClient, *, busy_timeout_s: float = 30.0) -> None:
        self._llm = llm
        self._locks = ConversationLocks()
        self._busy_timeout_s = busy_timeout_s

    async def _begin(
        self, owner: uuid.UUID, conversation_id: uuid.UUID, data: MessageSend
    ) -> tuple[Exchange, ChatRequest]:
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                exchange = await messages.begin_exchange(owner, conversation_id, data.content)
                break
            except ConversationBusyError:
                # Another process is replying in this conversation; wait our turn.
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(BUSY_RETRY_S)
        config = exchange.config
        request = ChatRequest(
            messages=[
                ChatMessage(role=turn.role, content=turn.content) for turn in exchange.history
            ],
            model=config.model,
            extra=dict(config.extra),
            **config.sampling(data.overrides()),
        )
        return exchange, request

    async def send(
        self,
        owner: uuid.UUID,
        conversation_id: uuid.UUID,
        data: MessageSend,
        *,
        request_id: str | None = None,
    ) -> MessageOut:
        """Send and wait for the whole reply. Raises the LLM's error after recording it."""
        async with self._locks.hold(conversation_id):
            exchange, request = await self._begin(owner, conversation_id, data)
            config, reply_id = exchange.config, exchange.assistant_message.id
            try:
                result = await self._llm.chat(request, request_id=request_id)
            except LLMError as exc:
                await _finish(reply_id, _failed(exc, config), config)
                exc.details.setdefault("user_message_id", str(exchange.user_message.id))
                exc.details.setdefault("assistant_message_id", str(reply_id))
                raise
            except asyncio.CancelledError:
                await _finish(reply_id, _cancelled("", config), config)
                raise
            except Exception as exc:
                await _finish(reply_id, _broken(exc, config), config)
                raise
            # Non-streaming: the first token arrives with the whole answer.
            outcome = _completed(result.content, result, ttft_ms=result.latency_ms)
            return await _finish(reply_id, outcome, config)

    async def stream(
        self,
        owner: uuid.UUID,
        conversation_id: uuid.UUID,
        data: MessageSend,
        *,
        request_id: str | None = None,
    ) -> AsyncIterator[ChatEvent]:
        """Send and yield the reply as it arrives: ``message``, ``delta``..., ``done``/``error``.

        Closing the iterator early (the client went away) aborts the upstream request and
        stores what arrived so far as a ``cancelled`` reply.
        """
        async with self._locks.hold(conversation_id):
            exchange, request = await self._begin(owner, conversation_id, data)
            config, reply_id = exchange.config, exchange.assistant_message.id
            parts: list[str] = []
            finished = False
            try:
                yield MessageStarted(
                    user_message=exchange.user_message,
                    assistant_message=exchange.assistant_message,
                )
                upstream = self._llm.stream_chat(request, request_id=request_id)
                done: ChatDone | None = None
                async with aclosing(upstream) as events:
                    async for event in events:
                        if isinstance(event, ChatDelta):
                            parts.append(event.text)
                            yield ReplyDelta(text=event.text)
                        else:
                            done = event
                if done is None:
                    raise LLMError("the upstream stream ended without finishing the reply")
                finished = True
                stored = await _finish(
                    reply_id, _completed("".join(parts), done, done.ttft_ms), config
                )
                yield ReplyDone(message=stored)
            except LLMError as exc:
                finished = True
                outcome = _failed(exc, config, partial="".join(parts))
                stored = await _finish(reply_id, outcome, config)
                yield ReplyFailed(
                    error={"code": exc.code, "message": exc.message, "details": exc.details},
                    message=stored,
                )
            except Exception as exc:
                finished = True
                await _finish(reply_id, _broken(exc, config, partial="".join(parts)), config)
                raise
            finally:
                if not finished:
                    await _finish(reply_id, _cancelled("".join(parts), config), config)


async def _finish(reply_id: uuid.UUID, outcome: ReplyOutcome, config: LLMConfigOut) -> MessageOut:
    """Record the outcome even while the surrounding task is being cancelled."""
    _observe(outcome, config)
    with anyio.CancelScope(shield=True):
        stored = await messages.finish_exchange(
            reply_id,
            outcome,
            config=ConfigRef(id=config.id, name=config.name, version=config.version),
        )
    return stored  # noqa: RET504 - returning inside the shield confuses type checkers


def _observe(outcome: ReplyOutcome, config: LLMConfigOut) -> None:
    model = outcome.model or config.model
    CHAT_MESSAGES.labels(outcome.status).inc()
    LLM_REQUESTS.labels(model, outcome.error_code or outcome.status).inc()
    if outcome.ttft_ms is not None:
        LLM_TTFT.labels(model).observe(outcome.ttft_ms / 1000)
    if outcome.latency_ms is not None and outcome.status == "complete":
        LLM_DURATION.labels(model).observe(outcome.latency_ms / 1000)
    if outcome.prompt_tokens is not None:
        LLM_TOKENS.labels(model, "prompt").inc(outcome.prompt_tokens)
    if outcome.completion_tokens is not None:
        LLM_TOKENS.labels(model, "completion").inc(outcome.completion_tokens)


def _completed(content: str, end: ChatResult | ChatDone, ttft_ms: float | None) -> ReplyOutcome:
    usage = end.usage
    return ReplyOutcome(
        status="complete",
        content=content,
        model=end.model or None,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        latency_ms=end.latency_ms,
        ttft_ms=ttft_ms,
        finish_reason=end.finish_reason,
        upstream_request_id=end.response_id,
    )


def _failed(exc: LLMError, config: LLMConfigOut, *, partial: str = "") -> ReplyOutcome:
    log.warning("chat.reply_failed", code=exc.code, error=exc.message, model=config.model)
    return ReplyOutcome(
        status="failed",
        content=partial or exc.partial_text,
        error_code=exc.code,
        error_message=exc.message,
    )


def _broken(exc: Exception, config: LLMConfigOut, *, partial: str = "") -> ReplyOutcome:
    """Not the model's fault (a bug, the database): the reply must still not stay pending."""
    log.error("chat.reply_broken", error=repr(exc), model=config.model)
    return ReplyOutcome(
        status="failed",
        content=partial,
        error_code="internal_error",
        error_message="the gateway failed while handling the reply",
    )


def _cancelled(partial: str, config: LLMConfigOut) -> ReplyOutcome:
    log.info("chat.reply_cancelled", model=config.model, partial_chars=len(partial))
    return ReplyOutcome(
        status="cancelled",
        content=partial,
        error_code="cancelled",
        error_message="the client disconnected before the reply was complete",
    )
