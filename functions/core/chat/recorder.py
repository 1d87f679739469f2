"""Recording how a reply ended: the never-lose bookkeeping, in one public place.

Every door that sends (the chat function, the OpenAI door, evaluation, replay) claims an
exchange and then ends its pending reply through a :class:`ReplyRecorder`: ``completed``,
``failed`` (the model's error), ``cancelled`` (the caller went away) or ``broken`` (a bug
or the database: not the model's fault). Each writes the outcome once, inside a shield
that a cancellation cannot interrupt, and counts it in the metrics.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from functions.core.db.errors import as_database_error
from functions.core.errors import ConflictError, NotFoundError, SwitchboardError
from functions.core.logging import get_logger, note_request, note_request_text
from functions.core.messages import service as messages
from functions.core.messages.schemas import ConfigRef, ReplyOutcome
from functions.core.metrics import (
    CHAT_MESSAGES,
    LLM_DURATION,
    LLM_ERRORS,
    LLM_ITL,
    LLM_REQUESTS,
    LLM_TOKENS,
    LLM_TTFT,
    child,
)

if TYPE_CHECKING:
    import uuid

    from functions.core.llm.errors import LLMError
    from functions.core.llm.schemas import ChatDone, ChatResult
    from functions.core.messages.schemas import Exchange, MessageOut

log = get_logger(__name__)
# Codes whose model was named by the caller and served by no upstream: never a label value.
_UNSERVED_MODEL_CODES = frozenset({"model_not_served", "model_not_found"})
NO_UPSTREAM = "none"


# Outcomes a database outage kept from being written, still being retried.
_BACKLOG: set[asyncio.Task[None]] = set()


async def flush_backlog(timeout_s: float) -> None:
    """Give outcomes still waiting for the database a last chance (a process closing)."""
    if _BACKLOG:
        _, pending = await asyncio.wait(set(_BACKLOG), timeout=timeout_s)
        for task in pending:
            task.cancel()


class ReplyNotRecordedError(SwitchboardError):
    """The outcome could not be written: the message is stored, the reply's row is not."""

    status_code = 503
    code = "reply_not_recorded"


class ConversationGoneError(NotFoundError):
    """The conversation was deleted while its reply was being generated."""


def conversation_gone(conversation_id: uuid.UUID) -> ConversationGoneError:
    return ConversationGoneError(
        f"conversation {conversation_id} was deleted while its reply was being generated",
        details={"conversation_id": str(conversation_id)},
    )


class ReplyRecorder:
    """Ends one exchange's pending reply, exactly once.

    The write is retried with backoff for up to ``retry_s`` while the database is
    unreachable (it only ever finishes a pending row, so retrying is safe), holding the
    reply until it lands. If it never does, :class:`ReplyNotRecordedError` says exactly
    that, with the ids and the reply's text.
    """

    def __init__(self, exchange: Exchange, *, retry_s: float = 30.0) -> None:
        self.exchange = exchange
        self.finished = False
        self._retry_s = retry_s
        config = exchange.config
        self._config_ref = (
            ConfigRef(id=config.id, name=config.name, version=config.version)
            if config is not None
            else None
        )
        self._model = exchange.model or ""
        # The upstream that answered (or failed), for the metrics; unknown until then.
        self._upstream = NO_UPSTREAM

    async def completed(
        self, content: str, end: ChatResult | ChatDone, *, ttft_ms: float | None
    ) -> MessageOut:
        usage = end.usage
        self._upstream = end.upstream_url
        return await self.record(
            ReplyOutcome(
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
        )

    async def failed(self, exc: LLMError, *, partial: str = "") -> MessageOut:
        log.warning("chat.reply_failed", code=exc.code, error=exc.message, model=self._model)
        self._upstream = str(exc.details.get("upstream_url") or NO_UPSTREAM)
        return await self.record(
            ReplyOutcome(
                status="failed",
                content=partial or exc.partial_text,
                error_code=exc.code,
                error_message=exc.message,
            )
        )

    async def broken(self, exc: BaseException, *, partial: str = "") -> MessageOut:
        """Not the model's fault (a bug, the database): the reply must still not stay pending."""
        log.error("chat.reply_broken", error=repr(exc), model=self._model)
        return await self.record(
            ReplyOutcome(
                status="failed",
                content=partial,
                error_code="internal_error",
                error_message="the gateway failed while handling the reply",
            )
        )

    async def cancelled(self, partial: str = "") -> MessageOut:
        log.info("chat.reply_cancelled", model=self._model, partial_chars=len(partial))
        return await self.record(
            ReplyOutcome(
                status="cancelled",
                content=partial,
                error_code="cancelled",
                error_message="the client disconnected before the reply was complete",
            )
        )

    async def shutdown(self, partial: str = "") -> MessageOut:
        log.warning("chat.reply_shutdown", model=self._model, partial_chars=len(partial))
        return await self.record(
            ReplyOutcome(
                status="failed",
                content=partial,
                error_code="shutdown",
                error_message="the gateway shut down (a deploy or a restart) before the reply "
                "was complete",
            )
        )

    def gone(self) -> ConversationGoneError:
        """The conversation was deleted: nothing left to record (its rows went with it)."""
        self.finished = True
        log.info("chat.reply_conversation_deleted", model=self._model)
        return conversation_gone(self.exchange.assistant_message.conversation_id)

    async def record(self, outcome: ReplyOutcome) -> MessageOut:
        """Write ``outcome`` even while the surrounding task is being cancelled.

        The write runs as a task of its own and is awaited through every cancellation
        (``asyncio.shield`` alone gives up at the first one; an anyio shield does not stop
        a plain ``task.cancel()``); a cancellation that arrived meanwhile is raised after.
        """
        if self.finished:
            raise RuntimeError("this reply has already been recorded")
        self.finished = True
        self._observe(outcome)
        write = asyncio.ensure_future(self._write(outcome))
        cancelled = False
        while True:
            try:
                stored = await asyncio.shield(write)
            except asyncio.CancelledError:
                if write.done():
                    raise
                cancelled = True
                continue
            break
        if cancelled:
            raise asyncio.CancelledError
        return stored

    async def _write(self, outcome: ReplyOutcome) -> MessageOut:
        deadline = time.monotonic() + self._retry_s
        delay, attempt = 0.05, 1
        while True:
            try:
                return await self._finish(outcome, attempt)
            except Exception as exc:
                if as_database_error(exc) is None:
                    raise
                if time.monotonic() + delay > deadline:
                    log.error("chat.reply_not_recorded", error=str(exc), attempts=attempt)
                    self._write_later(outcome)
                    raise self._not_recorded(outcome) from exc
                log.warning("chat.reply_write_retry", error=str(exc), attempt=attempt)
            await asyncio.sleep(delay)
            delay, attempt = min(delay * 2, 2.0), attempt + 1

    async def _finish(self, outcome: ReplyOutcome, attempt: int) -> MessageOut:
        reply_id = self.exchange.assistant_message.id
        try:
            return await messages.finish_exchange(
                reply_id,
                outcome,
                config=self._config_ref,
                owner_instance=self.exchange.instance_id,
            )
        except ConflictError:
            try:
                current = await messages.get_message(reply_id)
            except NotFoundError:
                raise conversation_gone(self.exchange.assistant_message.conversation_id) from None
            if attempt > 1 and (current.status, current.content) == (
                outcome.status,
                outcome.content,
            ):
                # An earlier attempt landed but its answer was lost with the connection.
                return current
            raise

    def _write_later(self, outcome: ReplyOutcome) -> None:
        """Keep the outcome and write it once the database is back, so the reply does not
        stay pending (and its conversation busy) after its client was told."""
        task = asyncio.get_running_loop().create_task(self._keep_writing(outcome))
        _BACKLOG.add(task)
        task.add_done_callback(_BACKLOG.discard)

    async def _keep_writing(self, outcome: ReplyOutcome) -> None:
        delay, attempt = 1.0, 2
        while True:
            await asyncio.sleep(delay)
            try:
                await self._finish(outcome, attempt)
            except Exception as exc:
                if as_database_error(exc) is None:
                    log.warning("chat.reply_backlog_dropped", error=repr(exc))
                    return
                delay, attempt = min(delay * 2, 10.0), attempt + 1
                continue
            log.info("chat.reply_backlog_written", attempts=attempt)
            return

    def _not_recorded(self, outcome: ReplyOutcome) -> ReplyNotRecordedError:
        return ReplyNotRecordedError(
            "your message is stored, but the database did not take the reply's outcome yet; "
            "the reply is in details.content, and this gateway keeps writing it until the "
            "database is back",
            details={
                "user_message_id": str(self.exchange.user_message.id),
                "assistant_message_id": str(self.exchange.assistant_message.id),
                "conversation_id": str(self.exchange.assistant_message.conversation_id),
                "status": outcome.status,
                "content": outcome.content,
                "error_code": outcome.error_code,
            },
            retry_after_s=5,
        )

    def _observe(self, outcome: ReplyOutcome) -> None:
        model = outcome.model or self._model
        if outcome.error_code in _UNSERVED_MODEL_CODES:
            model = "unknown"
        upstream = self._upstream
        config = self.exchange.config
        child(CHAT_MESSAGES, outcome.status).inc()
        child(LLM_REQUESTS, upstream, model, outcome.status).inc()
        if outcome.status == "failed" and outcome.error_code is not None:
            child(LLM_ERRORS, upstream, model, outcome.error_code).inc()
        if outcome.ttft_ms is not None:
            child(LLM_TTFT, upstream, model).observe(outcome.ttft_ms / 1000)
        if outcome.latency_ms is not None and outcome.status == "complete":
            child(LLM_DURATION, upstream, model).observe(outcome.latency_ms / 1000)
            tokens = outcome.completion_tokens
            if outcome.ttft_ms is not None and tokens is not None and tokens > 1:
                itl_ms = (outcome.latency_ms - outcome.ttft_ms) / (tokens - 1)
                child(LLM_ITL, upstream, model).observe(max(itl_ms, 0.0) / 1000)
        config_name = config.name if config is not None else "none"
        if outcome.prompt_tokens is not None:
            child(LLM_TOKENS, model, config_name, "prompt").inc(outcome.prompt_tokens)
        if outcome.completion_tokens is not None:
            child(LLM_TOKENS, model, config_name, "completion").inc(outcome.completion_tokens)
        # The facts of this send for the request's one log line (and its overhead metric).
        note_request(
            conversation_id=str(self.exchange.assistant_message.conversation_id),
            model=model,
            config=config_name,
            upstream=upstream,
            reply_status=outcome.status,
            error_code=outcome.error_code,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            ttft_ms=outcome.ttft_ms,
            llm_ms=outcome.latency_ms,
        )
        note_request_text(prompt=self.exchange.user_message.content, reply=outcome.content)
