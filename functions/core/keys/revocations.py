"""Revocations reach every process at once: PostgreSQL ``NOTIFY`` on revoke, and in each
serving process a subscription that drops the key from its :mod:`~functions.core.keys.cache`.

While a process is not listening (starting, or its listening connection dropped) it
cannot hear revocations, so it stops caching until it listens again: a missed message
can never keep a revoked key alive. SQLite has no notifications; there the cache TTL
bounds how long another process may still accept a revoked key.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

from functions.core.db.notifications import Subscription, notify

if TYPE_CHECKING:
    from functions.core.keys.cache import PrincipalCache

CHANNEL = "switchboard_key_revoked"


async def announce(key_id: uuid.UUID) -> None:
    """Tell every listening process that ``key_id`` was revoked (PostgreSQL only)."""
    await notify(CHANNEL, str(key_id))


def revocations_for(cache: PrincipalCache, ttl_s: float) -> Subscription:
    """A subscription that caches only while revocations can be heard."""

    def forget(payload: str) -> None:
        with contextlib.suppress(ValueError):
            cache.forget(uuid.UUID(payload))

    return Subscription(
        channel=CHANNEL,
        on_message=forget,
        on_listening=lambda: cache.enable(ttl_s),
        on_lost=cache.disable,
    )
