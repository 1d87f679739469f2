"""Graceful shutdown that drains: in-flight sends finish within a grace, then end cleanly.

On SIGTERM (a deploy, a restart) the server stops accepting connections and calls
:func:`begin_shutdown`. Every :class:`Drain` (one per serving runtime) then refuses new
sends and gives the sends in flight ``shutdown_grace_s`` to finish. When the grace runs
out it cancels the ones left (see :meth:`Drain.guard`): each records its
reply as ``shutdown`` and tells its client (a JSON 503, or an SSE ``error`` event) before
the server closes connections, and only then does the runtime close the database pool.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from functions.core.errors import SwitchboardError
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

log = get_logger(__name__)

_DRAINS: weakref.WeakSet[Drain] = weakref.WeakSet()


class ShuttingDownError(SwitchboardError):
    status_code = 503
    code = "shutting_down"


def shutting_down(details: dict[str, Any] | None = None) -> ShuttingDownError:
    return ShuttingDownError(
        "this gateway process is shutting down (a deploy or a restart); retry the request",
        details=details,
        retry_after_s=1,
    )


class Guard:
    """One send in flight: the drain cancels its task when the grace runs out."""

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.by_drain = False

    def claim_cancellation(self) -> bool:
        """In an ``except CancelledError``: whether the drain did it (then the task goes on
        to record the reply and answer its client, so the cancellation is taken back)."""
        if not self.by_drain:
            return False
        self.task.uncancel()
        return True


class Drain:
    """One runtime's in-flight sends and what happens to them at shutdown."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.expired = False
        self._guards: set[Guard] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def register(self) -> None:
        """Listen for :func:`begin_shutdown` (serving processes only)."""
        self._loop = asyncio.get_running_loop()
        _DRAINS.add(self)

    def unregister(self) -> None:
        _DRAINS.discard(self)

    def check_accepting(self) -> None:
        if self.draining:
            raise shutting_down()

    @contextmanager
    def guard(self) -> Iterator[Guard]:
        """Mark the current task as a send in flight until the block ends."""
        task = asyncio.current_task()
        assert task is not None
        guard = Guard(task)
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
            guard.by_drain = True
            guard.task.cancel(msg="switchboard: shutdown grace expired")


def chain_signal_handlers() -> Callable[[], None]:
    """Make SIGTERM and SIGINT start draining, then do what they did before.

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


def begin_shutdown() -> None:
    """Start draining every serving runtime of this process (safe from a signal handler)."""
    for drain in list(_DRAINS):
        if drain._loop is not None and not drain._loop.is_closed():
            drain._loop.call_soon_threadsafe(drain._begin)
