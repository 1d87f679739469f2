from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from piccolo.engine.base import Engine

from functions.core.errors import AuthenticationError
from functions.core.keys import revocations, service
from functions.core.keys.cache import (
    PrincipalCache,
    bind_principals,
    current_principals,
    unbind_principals,
)
from functions.core.keys.schemas import ApiKeyCreate


@pytest.fixture
def principals(db: Engine[Any]) -> Iterator[PrincipalCache]:
    """A cache that is on, bound to the test as a runtime binds its own."""
    cache = PrincipalCache(5.0, marker=revocations.marker_path(db))
    token = bind_principals(cache)
    yield cache
    unbind_principals(token)


async def test_a_cached_key_skips_the_database_until_revoked(principals: PrincipalCache) -> None:
    created = await service.create_key(ApiKeyCreate(name="busy-app"))
    first = await service.authenticate(created.secret)
    mark = revocations.read_mark(principals.marker)
    assert principals.get(service.hash_secret(created.secret), mark) == first
    assert created.secret not in repr(principals._entries)  # keyed by hash, never the secret

    await service.revoke_key(created.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        await service.authenticate(created.secret)


async def test_a_context_without_a_runtime_caches_nothing(db: Engine[Any]) -> None:
    off = current_principals()
    off.enable(60.0)  # only a runtime turns its own cache on
    created = await service.create_key(ApiKeyCreate(name="no-runtime"))
    await service.authenticate(created.secret)
    assert not off.enabled
    assert off.get(service.hash_secret(created.secret)) is None


def test_entries_expire_and_a_zero_ttl_stores_nothing() -> None:
    import uuid

    from functions.core.keys.schemas import Principal

    principal = Principal(key_id=uuid.uuid4(), name="x", scopes=frozenset({"chat"}))
    off = PrincipalCache(ttl_s=0)
    off.put("h", principal)
    assert off.get("h") is None

    short = PrincipalCache(ttl_s=0.05)
    short.put("h", principal)
    assert short.get("h") == principal
    time.sleep(0.06)
    assert short.get("h") is None


def test_an_entry_is_trusted_only_under_the_mark_it_was_stored_with() -> None:
    import uuid

    from functions.core.keys.schemas import Principal

    principal = Principal(key_id=uuid.uuid4(), name="x", scopes=frozenset({"chat"}))
    cache = PrincipalCache(ttl_s=60)
    cache.put("h", principal, b"mark-1")
    assert cache.get("h", b"mark-1") == principal
    assert cache.get("h", b"mark-2") is None  # a revocation happened since: ask again
    assert cache.get("h", b"mark-1") is None  # and the entry is gone
