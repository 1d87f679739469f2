"""Revocations reach every process at once.

PostgreSQL: ``NOTIFY`` on revoke, and in each serving process a subscription that drops
the key from its :mod:`~functions.core.keys.cache`. While a process is not listening
(starting, or its listening connection dropped) it cannot hear revocations, so it stops
caching until it listens again: a missed message can never keep a revoked key alive.

SQLite has no notifications. There a revocation replaces a small marker file next to the
database (``<database>.revocations``, new random content each time) after its write is
committed; a cached key is trusted only while the marker still holds what it held before
the key was read from the database. Reading it costs about 10 µs, against about 1.3 ms
for the query it saves, and a revocation by any process (the CLI, another worker) is
seen by the next request everywhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from piccolo.engine.sqlite import SQLiteEngine

from functions.core.db.engine import current_engine
from functions.core.db.notifications import Subscription, notify
from functions.core.logging import get_logger

if TYPE_CHECKING:
    from piccolo.engine.base import Engine

    from functions.core.keys.cache import PrincipalCache

log = get_logger(__name__)
CHANNEL = "switchboard_key_revoked"
MARKER_SUFFIX = ".revocations"
_MARKER_BYTES = 64


def marker_path(engine: Engine[Any]) -> str | None:
    """Where revocations are marked for ``engine``: a SQLite database's sibling file.

    A runtime asks once, for its cache (``PrincipalCache.marker``), so the hot path pays
    no string building and two runtimes never share one memo.
    """
    return engine.path + MARKER_SUFFIX if isinstance(engine, SQLiteEngine) else None


def read_mark(path: str | None) -> bytes | None:
    """What the revocation marker at ``path`` holds now (None on PostgreSQL, or before any
    revocation)."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, _MARKER_BYTES)
    finally:
        os.close(fd)


def _replace_marker(path: str) -> None:
    """New content under the same name, atomically: a reader sees the old or the new."""
    temporary = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(16).encode())
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


async def announce(key_id: uuid.UUID) -> None:
    """Tell every serving process that ``key_id`` was revoked; call it after the write is
    committed (on PostgreSQL inside the transaction is fine: NOTIFY waits for the commit)."""
    path = marker_path(current_engine())
    if path is not None:
        try:
            _replace_marker(path)
        except OSError as exc:
            # The key is revoked; only other processes' caches may keep it up to their TTL.
            log.warning("key.revocation_not_marked", marker=path, error=str(exc))
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
