"""Sending: store first, call the model, record how it ended — for every door.

:class:`ChatService` is the one send path. A door (the chat function, the OpenAI door,
evaluation, replay) describes its send as a :class:`SendRequest`; the service claims the
exchange (``exchanges``: ownership, configuration, the turns and a pending reply committed
before vLLM is called, the prompt), calls the model and ends the reply through a
``ReplyRecorder``, whose write a cancellation cannot interrupt. One lock per conversation
in this process makes concurrent sends wait in order instead of polling the database.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.locks import ConversationLocks
from functions.core.chat.recorder import ReplyRecorder
from functions.core.chat.schemas import (
    ChatEvent,
    MessageStarted,
    ReplyDelta,
    ReplyDone,
    ReplyFailed,
    SendRequest,
)
from functions.core.llm.errors import LLMError
from functions.core.llm.schemas import ChatDelta, ChatDone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from functions.core.llm.client import LLMClient
    from functions.core.messages.schemas import MessageOut


class ChatService:
    """The send path for one process; shared by every request (it holds the locks)."""

    def __init__(self, llm: LLMClient, exchanges: Exchanges | None = None) -> None:
        self._llm = llm
        self._locks = ConversationLocks()
        self.exchanges = exchanges or Exchanges()

    async def send(self, request: SendRequest) -> MessageOut:
        """Send and wait for the whole reply. Raises the LLM's error after recording it."""
        request, conversation_id = await self.exchanges.prepare(request)
        async with self._locks.hold(conversation_id):
            exchange = await self.exchanges.begin(request)
            recorder = ReplyRecorder(exchange)
            try:
                result = await self._llm.chat(
                    self.exchanges.llm_request(exchange, request), request_id=request.request_id
                )
            except LLMError as exc:
                await recorder.failed(exc)
                exc.details.setdefault("user_message_id", str(exchange.user_message.id))
                exc.details.setdefault("assistant_message_id", str(exchange.assistant_message.id))
                raise
            except asyncio.CancelledError:
                await recorder.cancelled()
                raise
            except Exception as exc:
                await recorder.broken(exc)
                raise
            # Non-streaming: the first token arrives with the whole answer.
            return await recorder.completed(result.content, result, ttft_ms=result.latency_ms)

    async def stream(self, request: SendRequest) -> AsyncIterator[ChatEvent]:
        """Send and yield the reply as it arrives: ``message``, ``delta``..., ``done``/``error``.

        Closing the iterator early (the client went away) aborts the upstream request and
        stores what arrived so far as a ``cancelled`` reply.
        """
        request, conversation_id = await self.exchanges.prepare(request)
        async with self._locks.hold(conversation_id):
            exchange = await self.exchanges.begin(request)
            recorder = ReplyRecorder(exchange)
            parts: list[str] = []
            try:
                yield MessageStarted(
                    user_message=exchange.user_message,
                    assistant_message=exchange.assistant_message,
                )
                upstream = self._llm.stream_chat(
                    self.exchanges.llm_request(exchange, request), request_id=request.request_id
                )
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
                stored = await recorder.completed("".join(parts), done, ttft_ms=done.ttft_ms)
                yield ReplyDone(message=stored)
            except LLMError as exc:
                stored = await recorder.failed(exc, partial="".join(parts))
                yield ReplyFailed(
                    error={"code": exc.code, "message": exc.message, "details": exc.details},
                    message=stored,
                )
            except Exception as exc:
                if not recorder.finished:
                    await recorder.broken(exc, partial="".join(parts))
                raise
            finally:
                if not recorder.finished:
                    await recorder.cancelled("".join(parts))
