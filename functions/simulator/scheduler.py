"""vLLM's ``--max-num-seqs``: at most that many requests generate at once, the rest queue.

vLLM has no 429: overload shows as a growing ``vllm:num_requests_waiting`` and latency. The
queue is FIFO; a released slot passes straight to the oldest waiter.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Scheduler:
    """Counts running requests against a cap (0: no cap) and queues the overflow."""

    __slots__ = ("limit", "running", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free right now (no queue jumping)."""
        if self.limit == 0 or (self.running < self.limit and not self.waiters):
            self.running += 1
            return True
        return False

    def enqueue(self) -> asyncio.Future[None]:
        """Join the queue; the future resolves once a slot has been handed over."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return waiter

    def leave_queue(self, waiter: asyncio.Future[None]) -> None:
        """Give up waiting (the client left); a slot handed over meanwhile is given back."""
        if waiter.done():
            self.release()
            return
        waiter.cancel()
        self.waiters.remove(waiter)

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; ``running`` is unchanged
                return
        self.running -= 1

    @property
    def waiting(self) -> int:
        return len(self.waiters)
