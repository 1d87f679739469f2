"""One reply at a time per conversation, within this process.

Across processes, the claim refuses while a reply is pending and the send retries until
``SWITCHBOARD_SEND_LOCK_TIMEOUT_S``; this lock makes the common single-process case wait
in order instead of polling. Both waits share one budget: :meth:`ConversationLocks.hold`
yields the send's deadline, which the claim's retries keep to (``Exchanges.begin``), so a
send queued behind long replies gets ``409 conversation_busy`` after that timeout, never
after the lock's wait and the claim's wait one after the other.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from functions.core.messages.claim import busy_error

if TYPE_CHECKING:
    import uuid
    from types import TracebackType


class ConversationLocks:
    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}

    def hold(self, conversation_id: uuid.UUID, timeout_s: float) -> Hold:
        """``async with``: hold the conversation's lock; :class:`ConversationBusyError`
        after ``timeout_s``.

        Gives what is left of the budget as a deadline (``time.monotonic()``): whatever
        the send waits for next (the claim's retries) ends by then.
        """
        return Hold(self._locks, conversation_id, timeout_s)

    def __len__(self) -> int:
        return len(self._locks)


class Hold:
    """One send's hold on its conversation's lock (:meth:`ConversationLocks.hold`). A
    class rather than an ``asynccontextmanager``: every send enters one, and the
    generator-based kind costs several times more."""

    __slots__ = ("_conversation_id", "_lock", "_locks", "_timeout_s")

    def __init__(
        self,
        locks: dict[uuid.UUID, tuple[asyncio.Lock, int]],
        conversation_id: uuid.UUID,
        timeout_s: float,
    ) -> None:
        self._locks = locks
        self._conversation_id = conversation_id
        self._timeout_s = timeout_s

    async def __aenter__(self) -> float:
        timeout_s = self._timeout_s
        deadline = time.monotonic() + timeout_s
        conversation_id = self._conversation_id
        lock, users = self._locks.get(conversation_id, (asyncio.Lock(), 0))
        self._locks[conversation_id] = (lock, users + 1)
        self._lock = lock
        try:
            if lock.locked():  # only a queued send pays for the timer
                try:
                    async with asyncio.timeout(timeout_s):
                        await lock.acquire()
                except TimeoutError:
                    raise busy_error(conversation_id) from None
            else:
                await lock.acquire()
        except BaseException:
            self._leave()
            raise
        return deadline

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._lock.release()
        finally:
            self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._conversation_id]
        if users == 1:
            del self._locks[self._conversation_id]
        else:
            self._locks[self._conversation_id] = (lock, users - 1)
