"""A short-lived, in-process memory of keys that just authenticated.

Authentication is one query on every request; a busy application key repeats it thousands
of times a second. Entries live ``ttl_s`` seconds (off when zero) and are keyed by the
secret's hash, never the secret. A revocation drops them at once: in this process
directly, in others through :mod:`functions.core.keys.revocations` (a notification on
PostgreSQL; on SQLite each entry carries the revocation mark read before its query and is
used only while the mark is unchanged). An entry of a key with an expiry lives no longer
than the key: the request after it expires reads the key again, and is refused.

Each runtime owns its cache (two runtimes in one process never share a key): it binds it
to the context it runs in, with its engine (``Runtime.bind``), and
:func:`current_principals` finds it there. A context with no runtime has a cache that is
off.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

from functions.core.binding import unbind

if TYPE_CHECKING:
    import uuid

    from functions.core.keys.schemas import Principal


class PrincipalCache:
    """``marker``: the SQLite revocation marker whose mark entries are checked against
    (:mod:`functions.core.keys.revocations`); None on PostgreSQL."""

    def __init__(self, ttl_s: float = 0.0, *, marker: str | None = None) -> None:
        self.ttl_s = ttl_s
        self.marker = marker
        self._entries: dict[str, tuple[Principal, float, bytes | None]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, key_hash: str, mark: bytes | None = None) -> Principal | None:
        """The cached caller, if it is fresh and ``mark`` (the revocation mark now) is the
        one it was stored with."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        principal, expires, stored_mark = entry
        if time.monotonic() >= expires or stored_mark != mark:
            del self._entries[key_hash]
            return None
        return principal

    def put(self, key_hash: str, principal: Principal, mark: bytes | None = None) -> None:
        """Remember ``principal``; ``mark`` is the revocation mark read *before* the query."""
        if self.ttl_s <= 0:
            return
        if len(self._entries) > 10_000:  # bounded: a flood of keys only costs queries
            self._entries.clear()
        now = time.monotonic()
        until = now + self.ttl_s
        if principal.expires_at is not None:
            # Dropped when the key expires, so the next request reads it (and is refused):
            # expiry costs no query while the key is cached.
            until = min(until, now + (principal.expires_at.timestamp() - time.time()))
        self._entries[key_hash] = (principal, until, mark)

    def enable(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s

    def disable(self) -> None:
        self.ttl_s = 0.0
        self._entries.clear()

    def forget(self, key_id: uuid.UUID) -> None:
        for key_hash, (principal, _, _) in list(self._entries.items()):
            if principal.key_id == key_id:
                del self._entries[key_hash]


class _Off(PrincipalCache):
    """The cache of a context no runtime is bound to: off, and never turned on."""

    def enable(self, ttl_s: float) -> None:
        return


_OFF = _Off()
_CURRENT: ContextVar[PrincipalCache] = ContextVar("switchboard_principals", default=_OFF)


def current_principals() -> PrincipalCache:
    """The cache of the runtime bound to this context (off when none is)."""
    return _CURRENT.get()


def bind_principals(cache: PrincipalCache) -> Token[PrincipalCache]:
    return _CURRENT.set(cache)


def unbind_principals(token: Token[PrincipalCache]) -> None:
    unbind(_CURRENT, token, _OFF)
