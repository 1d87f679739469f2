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
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from functions.core.messages.claim import busy_error

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator


class ConversationLocks:
    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, conversation_id: uuid.UUID, timeout_s: float) -> AsyncIterator[float]:
        """Hold the conversation's lock; :class:`ConversationBusyError` after ``timeout_s``.

        Yields what is left of the budget as a deadline (``time.monotonic()``): whatever
        the send waits for next (the claim's retries) ends by then.
        """
        deadline = time.monotonic() + timeout_s
        lock, users = self._locks.get(conversation_id, (asyncio.Lock(), 0))
        self._locks[conversation_id] = (lock, users + 1)
        try:
            if lock.locked():  # only a queued send pays for the timer
                try:
                    async with asyncio.timeout(timeout_s):
                        await lock.acquire()
                except TimeoutError:
                    raise busy_error(conversation_id) from None
            else:
                await lock.acquire()
            try:
                yield deadline
            finally:
                lock.release()
        finally:
            lock, users = self._locks[conversation_id]
            if users == 1:
                del self._locks[conversation_id]
            else:
                self._locks[conversation_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
