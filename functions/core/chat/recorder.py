"""Recording how a reply ended: the never-lose bookkeeping, in one public place.

Every door that sends (the chat function, the OpenAI door, evaluation, replay) claims an
exchange and then ends its pending reply through a :class:`ReplyRecorder`: ``completed``,
``failed`` (the model's error), ``cancelled`` (the caller went away) or ``broken`` (a bug
or the database: not the model's fault). Each writes the outcome once, inside a shield
that a cancellation cannot interrupt, and counts it in the metrics.

An outcome the database does not take within ``outcome_retry_s`` goes to the runtime's
:class:`OutcomeBacklog`: kept in the outcome journal on disk (``journal``) before the
client is told ``reply_not_recorded``, and written as soon as the database is back, by
this process or, if it stops first, by the next one to start (:meth:`OutcomeBacklog.replay`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, TypeVar

from functions.core.chat.journal import (
    JournalFullError,
    OutcomeJournal,
    UnwrittenOutcome,
    Written,
    claim_orphans,
)
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
from functions.core.threads.chain import reply_link

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from functions.core.chat.journal import JournalFile
    from functions.core.llm.errors import LLMError
    from functions.core.llm.schemas import ChatDone, ChatResult, Usage
    from functions.core.messages.schemas import Exchange, MessageOut

log = get_logger(__name__)
T = TypeVar("T")
# A reply's tool calls (OpenAI's message shape), or None when it made none.
ToolCalls = list[dict[str, Any]] | None
# Codes whose model was named by the caller and served by no upstream: never a label value.
_UNSERVED_MODEL_CODES = frozenset({"model_not_served", "model_not_found"})
NO_UPSTREAM = "none"

# How often a serving process looks for journals whose owner stopped (a worker that died
# while its neighbours live, an old process that finished draining after this one started).
JOURNAL_SCAN_S = 10.0
BACKLOG_MAX_DELAY_S = 10.0


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


async def write_outcome(entry: UnwrittenOutcome, *, retried: bool) -> MessageOut:
    """Finish ``entry``'s pending reply with its outcome: the one write every path uses.

    The reply's owner may also finish it after a sweep retired it ``interrupted`` (see
    ``messages.finish_exchange``), whichever process writes for it. ``retried``: an earlier
    attempt may have landed with its answer lost (a dropped connection, a process that
    stopped before noting it), so a reply already holding this very outcome counts as
    written: writing an outcome again is harmless, and it lands once.
    """
    try:
        return await messages.finish_exchange(
            entry.reply_id,
            entry.outcome,
            config=entry.config,
            owner_instance=entry.owner_instance,
            owner=entry.owner,
        )
    except ConflictError:
        try:
            current = await messages.get_message(entry.reply_id)
        except NotFoundError:
            raise conversation_gone(entry.conversation_id) from None
        code = current.error.code if current.error is not None else None
        outcome = entry.outcome
        if retried and (current.status, current.content, current.tool_calls, code) == (
            outcome.status,
            outcome.content,
            outcome.tool_calls,
            outcome.error_code,
        ):
            return current
        raise


async def _to_the_end(future: asyncio.Future[T]) -> T:
    """Await ``future`` through every cancellation (``asyncio.shield`` alone gives up at
    the first one; an anyio shield does not stop a plain ``task.cancel()``); a
    cancellation that arrived meanwhile is raised after."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
    return result


async def _on_disk(function: Callable[..., T], *args: Any) -> T:
    """A journal operation (an fsync'd write) in a worker thread, run to its end: a file is
    never closed under a write a cancelled caller left half done."""
    return await _to_the_end(asyncio.ensure_future(asyncio.to_thread(function, *args)))


async def _write_when_possible(entry: UnwrittenOutcome, *, delay: float) -> None:
    """Write ``entry`` whenever the database takes it, however long that is. What it can
    never take (its conversation deleted, its reply no longer this owner's) is logged
    as dropped: nothing else would tell."""
    attempt = 1
    while True:
        await asyncio.sleep(delay)
        try:
            await write_outcome(entry, retried=True)
        except ConversationGoneError:
            log.info("chat.reply_backlog_conversation_deleted", reply_id=str(entry.reply_id))
            return
        except Exception as exc:
            if as_database_error(exc) is None:
                log.error(
                    "chat.reply_backlog_dropped",
                    reply_id=str(entry.reply_id),
                    conversation_id=str(entry.conversation_id),
                    status=entry.outcome.status,
                    content_chars=len(entry.outcome.content),
                    error=repr(exc),
                )
                return
            delay, attempt = min(max(delay, 0.5) * 2, BACKLOG_MAX_DELAY_S), attempt + 1
            continue
        log.info("chat.reply_backlog_written", reply_id=str(entry.reply_id), attempts=attempt)
        return


class OutcomeBacklog:
    """This runtime's outcomes the database did not take in time, until it does.

    :meth:`keep` appends one to the outcome journal, fsync'd, and writes it in the
    background once the database is back; :meth:`replay` writes what the journals of
    stopped processes hold; :meth:`close` gives the backlog a last chance and leaves the
    rest in the journal for the next start. An outcome the journal cannot take (full, or
    a disk error; or no journal at all, as in tests) is still written while this process
    runs, and its client is told it would not survive a stop.
    """

    def __init__(self, *, retry_s: float = 30.0, journal: OutcomeJournal | None = None) -> None:
        self.retry_s = retry_s
        self.journal = journal
        # Each background write, and whether its outcome is in the journal.
        self._writers: dict[asyncio.Task[None], bool] = {}
        self._replayer: asyncio.Task[None] | None = None

    async def keep(self, entry: UnwrittenOutcome) -> bool:
        """Keep ``entry`` until it is written; returns whether it is on disk (survives a
        stop). Called before its client is told."""
        kept = await self._journal_keep(entry)
        task = asyncio.get_running_loop().create_task(self._keep_writing(entry, kept=kept))
        self._writers[task] = kept
        task.add_done_callback(self._forget)
        return kept

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._writers.pop(task, None)

    async def _journal_keep(self, entry: UnwrittenOutcome) -> bool:
        if self.journal is None:
            return False
        try:
            await _on_disk(self.journal.keep, entry)
        except JournalFullError as exc:
            log.error("chat.reply_journal_full", reply_id=str(entry.reply_id), error=str(exc))
            return False
        except Exception as exc:
            # A disk that refuses the write (or anything else): the client is told the
            # truth, and the outcome is still written while this process runs.
            log.error(
                "chat.reply_journal_failed",
                reply_id=str(entry.reply_id),
                journal=str(self.journal.path),
                error=str(exc),
            )
            return False
        return True

    async def _keep_writing(self, entry: UnwrittenOutcome, *, kept: bool) -> None:
        await _write_when_possible(entry, delay=1.0)
        if kept and self.journal is not None:
            try:
                await _on_disk(self.journal.written, entry.reply_id)
            except OSError as exc:
                # Written all the same: a replay finds it there and counts it as written.
                log.warning(
                    "chat.reply_journal_failed", journal=str(self.journal.path), error=str(exc)
                )

    def start_replay(self) -> None:
        """Replay the journals of stopped processes now and every ``JOURNAL_SCAN_S``, in
        the background, until :meth:`close`."""
        if self.journal is not None and self._replayer is None:
            self._replayer = asyncio.get_running_loop().create_task(
                self.replay(), name="switchboard-journal-replay"
            )

    async def replay(self) -> None:
        """:meth:`replay_orphans` now and every ``JOURNAL_SCAN_S``, until cancelled."""
        while True:
            await self.replay_orphans()
            await asyncio.sleep(JOURNAL_SCAN_S)

    async def replay_orphans(self) -> int:
        """Write every outcome the journals of stopped processes (of this database, in this
        journal's directory) still hold, waiting for the database as long as it takes;
        returns how many journals were replayed. Each outcome lands once, even when a
        replay is cut short and done again."""
        journal = self.journal
        if journal is None:
            return 0
        replayed = 0
        orphans = claim_orphans(journal.directory, database=journal.database, skip=journal.path)
        while (orphan := await _on_disk(next, orphans, None)) is not None:
            await self._replay_file(orphan)
            replayed += 1
        return replayed

    async def _replay_file(self, orphan: JournalFile) -> None:
        count = len(orphan.unwritten)
        owner = str(orphan.header.instance) if orphan.header is not None else None
        if count:
            log.warning(
                "chat.reply_journal_replaying", journal=str(orphan.path), owner=owner, count=count
            )
        try:
            for entry, _ in list(orphan.unwritten.values()):
                await _write_when_possible(entry, delay=0.0)
                await _on_disk(orphan.append, Written(reply_id=entry.reply_id))
            await _on_disk(orphan.remove)
        finally:
            orphan.close()
        if count:
            log.info("chat.reply_journal_replayed", journal=str(orphan.path), count=count)

    async def close(self, timeout_s: float) -> None:
        """A last chance for the backlog (a process closing): what is still unwritten after
        ``timeout_s`` stays in the journal for the next start, and the log says how many
        (and how many, never journaled, are lost)."""
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.wait([self._replayer])
            self._replayer = None
        if self._writers:
            _, pending = await asyncio.wait(set(self._writers), timeout=timeout_s)
            lost = sum(1 for task in pending if not self._writers.get(task, False))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            if lost:
                log.error("chat.reply_backlog_lost", count=lost)
        left = self.journal.close() if self.journal is not None else 0
        if left and self.journal is not None:
            log.warning(
                "chat.reply_backlog_left",
                count=left,
                journal=str(self.journal.path),
                detail="the next process to start on this journal directory writes them",
            )


class ReplyRecorder:
    """Ends one exchange's pending reply, exactly once.

    The write is retried with backoff for up to the backlog's ``retry_s`` while the
    database is unreachable (it only ever finishes a pending row, so retrying is safe),
    holding the reply until it lands. If it never does, the outcome goes to the
    ``backlog`` (the journal first) and :class:`ReplyNotRecordedError` says exactly that,
    with the ids and the reply's text.
    """

    def __init__(self, exchange: Exchange, backlog: OutcomeBacklog) -> None:
        self.exchange = exchange
        self.finished = False
        # The reply as the database took it, once it has (the pipeline's reconcile sees it).
        self.stored: MessageOut | None = None
        self._backlog = backlog
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
                tool_calls=end.tool_calls,
                model=end.model or None,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                latency_ms=end.latency_ms,
                ttft_ms=ttft_ms,
                finish_reason=end.finish_reason,
                upstream_request_id=end.response_id,
                chain_hash=reply_link(self.exchange.chain_parent, content, end.tool_calls),
            )
        )

    # A reply cut short keeps what arrived: its text (``partial``) and its tool calls
    # (``tool_calls``, the last one's arguments possibly unfinished).

    async def failed(
        self,
        exc: LLMError,
        *,
        partial: str = "",
        tool_calls: ToolCalls = None,
        usage: Usage | None = None,
    ) -> MessageOut:
        """``usage``: the counts up to the failure, as for :meth:`cancelled`."""
        log.warning("chat.reply_failed", code=exc.code, error=exc.message, model=self._model)
        self._upstream = str(exc.details.get("upstream_url") or NO_UPSTREAM)
        return await self.record(
            ReplyOutcome(
                status="failed",
                content=partial or exc.partial_text,
                tool_calls=tool_calls,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                error_code=exc.code,
                error_message=exc.message,
            )
        )

    async def broken(
        self, exc: BaseException, *, partial: str = "", tool_calls: ToolCalls = None
    ) -> MessageOut:
        """Not the model's fault (a bug, the database): the reply must still not stay pending."""
        log.error("chat.reply_broken", error=repr(exc), model=self._model)
        return await self.record(
            ReplyOutcome(
                status="failed",
                content=partial,
                tool_calls=tool_calls,
                error_code="internal_error",
                error_message="the gateway failed while handling the reply",
            )
        )

    async def cancelled(
        self, partial: str = "", tool_calls: ToolCalls = None, usage: Usage | None = None
    ) -> MessageOut:
        """``usage``: the counts up to the cut, when the upstream sent them on every chunk
        (``continuous_usage_stats``, which the OpenAI door asks for)."""
        log.info("chat.reply_cancelled", model=self._model, partial_chars=len(partial))
        return await self.record(
            ReplyOutcome(
                status="cancelled",
                content=partial,
                tool_calls=tool_calls,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                error_code="cancelled",
                error_message="the client disconnected before the reply was complete",
            )
        )

    async def shutdown(
        self, partial: str = "", tool_calls: ToolCalls = None, usage: Usage | None = None
    ) -> MessageOut:
        """``usage``: the counts up to the shutdown, as for :meth:`cancelled`."""
        log.warning("chat.reply_shutdown", model=self._model, partial_chars=len(partial))
        return await self.record(
            ReplyOutcome(
                status="failed",
                content=partial,
                tool_calls=tool_calls,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
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
        """Write ``outcome`` even while the surrounding task is being cancelled: the write
        runs as a task of its own, awaited to its end (:func:`_to_the_end`)."""
        if self.finished:
            raise RuntimeError("this reply has already been recorded")
        self.finished = True
        if outcome.upstream is None and self._upstream != NO_UPSTREAM:
            outcome.upstream = self._upstream
        self._observe(outcome)
        return await _to_the_end(asyncio.ensure_future(self._write(outcome)))

    async def _write(self, outcome: ReplyOutcome) -> MessageOut:
        entry = UnwrittenOutcome(
            reply_id=self.exchange.assistant_message.id,
            conversation_id=self.exchange.assistant_message.conversation_id,
            owner_instance=self.exchange.instance_id,
            config=self._config_ref,
            outcome=outcome,
            owner=self.exchange.owner,
        )
        deadline = time.monotonic() + self._backlog.retry_s
        delay, attempt = 0.05, 1
        while True:
            try:
                self.stored = await write_outcome(entry, retried=attempt > 1)
                return self.stored
            except Exception as exc:
                if as_database_error(exc) is None:
                    raise
                if time.monotonic() + delay > deadline:
                    log.error("chat.reply_not_recorded", error=str(exc), attempts=attempt)
                    # Kept (on disk first) before the client is told it will be written.
                    kept = await self._backlog.keep(entry)
                    raise self._not_recorded(outcome, kept=kept) from exc
                log.warning("chat.reply_write_retry", error=str(exc), attempt=attempt)
            await asyncio.sleep(delay)
            delay, attempt = min(delay * 2, 2.0), attempt + 1

    def _not_recorded(self, outcome: ReplyOutcome, *, kept: bool) -> ReplyNotRecordedError:
        promise = (
            "this gateway keeps writing it until the database is back (it is kept on disk, "
            "so a restart of the gateway does not lose it)"
            if kept
            else "this gateway keeps writing it until the database is back, but could not "
            "keep it on disk (the outcome journal is full or unwritable), so it is lost if "
            "the gateway stops first"
        )
        return ReplyNotRecordedError(
            "your message is stored, but the database did not take the reply's outcome yet; "
            f"the reply is in details.content, and {promise}",
            details={
                "user_message_id": str(self.exchange.user_message.id),
                "assistant_message_id": str(self.exchange.assistant_message.id),
                "conversation_id": str(self.exchange.assistant_message.conversation_id),
                "status": outcome.status,
                "content": outcome.content,
                "error_code": outcome.error_code,
                "kept_on_disk": kept,
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
