"""Sends in flight, and the two things that end them early: a shutdown, a deletion.

Graceful shutdown that drains: on SIGTERM (a deploy, a restart) the server stops accepting
connections and every serving runtime's :class:`InFlight` (see
:meth:`InFlight.drain_on_signals`) refuses new sends and gives the sends in flight
``shutdown_grace_s`` to finish. When the grace runs out it cancels the ones left (see
:meth:`InFlight.guard`): each records its reply as ``shutdown`` and tells its client (a
JSON 503, or an SSE ``error`` event) before the server closes connections, and only then
does the runtime close the database pool.

A conversation deleted while its reply is generated: :meth:`InFlight.cancel_conversation`
(called in the deleting process, and through a notification in the others) cancels its
send, which aborts the upstream generation and tells its client the conversation is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from functions.core.db.notifications import Subscription
from functions.core.errors import SwitchboardError
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType, TracebackType

log = get_logger(__name__)


class ShuttingDownError(SwitchboardError):
    status_code = 503
    code = "shutting_down"


def shutting_down(details: dict[str, Any] | None = None) -> ShuttingDownError:
    return ShuttingDownError(
        "this gateway process is shutting down (a deploy or a restart); retry the request",
        details=details,
        retry_after_s=1,
    )


Reason = Literal["shutdown", "deleted"]
CONVERSATION_DELETED = "switchboard_conversation_deleted"


class Interrupted(Exception):  # noqa: N818 - an ending, not an error
    """A send ended by the shutdown or a deletion; ``reason`` says which."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason = reason


class Guard:
    """One send in flight, which the shutdown or a deletion may end.

    The send wraps each wait on the model in :meth:`waiting`. Ending it while it waits
    cancels that wait; ending it while it is elsewhere (a streamed send suspended while its
    client reads) takes effect at its next wait. Either way the send sees
    :class:`Interrupted` and can still record its reply and tell its client.
    """

    def __init__(self, conversation_id: uuid.UUID | None) -> None:
        self.conversation_id = conversation_id
        self.reason: Reason | None = None
        self._waiting: asyncio.Task[Any] | None = None
        self._cancelled: asyncio.Task[Any] | None = None

    def end(self, reason: Reason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self._waiting is not None:
            self._cancelled = self._waiting
            self._waiting.cancel(msg=f"switchboard: {reason}")

    def waiting(self) -> Guard:
        """``with guard.waiting():`` around each wait on the model (a class, not a
        generator, as a streamed send enters it once per token)."""
        return self

    def __enter__(self) -> None:
        if self.reason is not None:
            raise Interrupted(self.reason)
        self._waiting = asyncio.current_task()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._waiting = self._waiting, None
        if (
            exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
            and task is not None
            and self._cancelled is task
            and self.reason is not None
        ):
            # Ours: take the cancellation back, the send goes on to record and answer.
            self._cancelled = None
            task.uncancel()
            raise Interrupted(self.reason) from None


class InFlight:
    """One runtime's sends in flight."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.expired = False
        self._guards: set[Guard] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def drain_on_signals(self) -> Callable[[], None]:
        """Drain on SIGTERM and SIGINT (serving runtimes only); returns the undo.

        No registry of runtimes: each runtime's handler drains it and then calls the one it
        replaced, so a signal reaches every serving runtime of the process.
        """
        self._loop = loop = asyncio.get_running_loop()

        def begin() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._begin)

        return chain_signal_handlers(begin)

    def check_accepting(self) -> None:
        if self.draining:
            raise shutting_down()

    @contextmanager
    def guard(self, conversation_id: uuid.UUID | None = None) -> Iterator[Guard]:
        """Count a send as in flight until the block ends."""
        guard = Guard(conversation_id)
        self._guards.add(guard)
        self._idle.clear()
        try:
            yield guard
        finally:
            self._guards.discard(guard)
            if not self._guards:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no send is in flight (the runtime does, before closing the pool)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def cancel_conversation(self, conversation_id: uuid.UUID) -> int:
        """End the sends generating in this conversation (it was deleted)."""
        doomed = [g for g in self._guards if g.conversation_id == conversation_id]
        for guard in doomed:
            guard.end("deleted")
        return len(doomed)

    def deletions(self) -> Subscription:
        """Hear conversations deleted by other processes (PostgreSQL notifications)."""

        def on_deleted(payload: str) -> None:
            with contextlib.suppress(ValueError):
                self.cancel_conversation(uuid.UUID(payload))

        return Subscription(channel=CONVERSATION_DELETED, on_message=on_deleted)

    def _begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("shutdown.draining", in_flight=len(self._guards), grace_s=self.grace_s)
        assert self._loop is not None
        self._loop.call_later(self.grace_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._guards:
            log.warning("shutdown.grace_expired", ending=len(self._guards))
        for guard in list(self._guards):
            guard.end("shutdown")


def chain_signal_handlers(begin_shutdown: Callable[[], None]) -> Callable[[], None]:
    """Make SIGTERM and SIGINT call ``begin_shutdown`` (safe from a signal handler), then
    do what they did before.

    Called once the server has installed its own handlers (uvicorn does so before the
    lifespan starts), so the drain begins at the same moment the server stops accepting,
    whatever runs the app (``switchboard serve``, ``uvicorn --factory ...``, any worker).
    Returns a function restoring the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(sig: int, frame: FrameType | None) -> None:
        begin_shutdown()
        before = previous[signal.Signals(sig)]
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return restore
