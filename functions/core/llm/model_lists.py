"""Which upstream serves which model, learned from ``/v1/models`` and kept fresh lazily.

A known model never waits: lists past their TTL are refetched in the background. A model
no list holds waits for a refetch of the lists that are due, or, at most once per
:data:`FORCED_REFRESH_INTERVAL_S`, of all of them (a model may have been loaded since).
One refetch runs at a time, so a burst of requests shares it instead of stampeding.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import msgspec

from functions.core.llm.errors import LLMError, LLMUnavailableError
from functions.core.llm.vllm_errors import error_for_status
from functions.core.llm.wire import ModelCard, model_list_decoder

if TYPE_CHECKING:
    from functions.core.llm.upstreams import Upstream, UpstreamPool

FORCED_REFRESH_INTERVAL_S = 1.0


class ModelLists:
    """Fetches the upstreams' model lists into the pool, on demand and in the background."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        pool: UpstreamPool,
        *,
        auth_headers: dict[str, str],
        timeout: httpx.Timeout,
        fetch_timeout_s: float,
    ) -> None:
        self._http = http
        self._pool = pool
        self._auth = auth_headers
        self._timeout = timeout
        self._fetch_timeout_s = fetch_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._last_forced = float("-inf")

    async def fetch(self, upstream: Upstream) -> list[ModelCard] | LLMError:
        """Read one upstream's cards into the pool; a failure is returned, not raised."""
        details = {"upstream": upstream.id, "upstream_url": upstream.url}
        try:
            async with asyncio.timeout(self._fetch_timeout_s):
                response = await self._http.get(
                    f"{upstream.base_url}/models", headers=self._auth, timeout=self._timeout
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            self._pool.models_failed(upstream)
            return LLMUnavailableError(
                f"cannot read the model list of {upstream.id}: {type(exc).__name__}",
                details=details,
            )
        if response.status_code != 200:
            self._pool.models_failed(upstream)
            return error_for_status(
                response.status_code, response.content, details=details, model=None
            )
        try:
            cards = model_list_decoder.decode(response.content).data
        except msgspec.DecodeError:
            self._pool.models_failed(upstream)
            return LLMError(f"unreadable model list from {upstream.id}", details=details)
        self._pool.set_models(upstream, (card.id for card in cards))
        return cards

    async def _refresh(self, upstreams: list[Upstream]) -> None:
        await asyncio.gather(*(self.fetch(u) for u in upstreams))

    def _start(self, upstreams: list[Upstream]) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._refresh(upstreams))
        return self._task

    async def prepare(self, model: str | None) -> None:
        """Make sure the lists can route ``model``, fetching only when they must."""
        if model is None:
            return
        due = self._pool.models_due()
        if self._pool.is_known(model):
            if due:
                self._start(due)
            return
        running = self._task is not None and not self._task.done()
        if not running and not due:
            now = asyncio.get_running_loop().time()
            if now - self._last_forced < FORCED_REFRESH_INTERVAL_S:
                return
            self._last_forced = now
            due = [u for u in self._pool.upstreams if not u.manual_down]
        # Shielded: a caller that goes away must not cancel a refresh others wait on.
        await asyncio.shield(self._start(due))

    def close(self) -> None:
        """Cancel a background refresh still running."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
