"""Notice a client going away while a handler sleeps, queues or streams.

uvicorn's ``send`` silently does nothing once the client is gone, so the only signal is an
``http.disconnect`` from ``receive``. One watcher task waits for it; sleeps race against it.
The task is only created when a handler actually waits, so instant requests pay nothing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from functions.simulator.asgi import Receive


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatcher:
    """Races waits against the client's ``http.disconnect``; call :meth:`close` when done."""

    __slots__ = ("_receive", "_task")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None

    @property
    def disconnected(self) -> bool:
        return self._task is not None and self._task.done()

    def _watch(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(_wait_for_disconnect(self._receive))
        return self._task

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; ``False`` as soon as the client disconnects instead."""
        if seconds <= 0.0:
            return not self.disconnected
        task = self._watch()
        if task.done():
            return False
        done, _ = await asyncio.wait((task,), timeout=seconds)
        return not done

    async def wait(self, awaitable: asyncio.Future[Any]) -> bool:
        """Wait for ``awaitable``; ``False`` if the client disconnects first."""
        task = self._watch()
        done, _ = await asyncio.wait((task, awaitable), return_when=asyncio.FIRST_COMPLETED)
        return awaitable in done

    async def until_disconnect(self) -> None:
        """Wait for nothing but the client going away."""
        await asyncio.shield(self._watch())

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
