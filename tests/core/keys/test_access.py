"""A key's expiry and the configurations and models it may use, on both engines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.errors import AuthenticationError, InvalidInputError, NotFoundError
from functions.core.keys import revocations, service
from functions.core.keys.cache import PrincipalCache, bind_principals, unbind_principals
from functions.core.keys.schemas import ApiKeyCreate, ApiKeyUpdate, KeyAccess


@pytest.fixture
def principals(db: Engine[Any]) -> Iterator[PrincipalCache]:
    cache = PrincipalCache(60.0, marker=revocations.marker_path(db))
    token = bind_principals(cache)
    yield cache
    unbind_principals(token)


def test_the_access_rule() -> None:
    anything = KeyAccess()
    assert anything.unrestricted
    assert anything.allows(None, "m")
    assert anything.allows("c", "m")
    configs = KeyAccess(configs=frozenset({"support"}))
    assert configs.allows("support", "any-model")
    assert not configs.allows("other", "any-model")
    assert not configs.allows(None, "any-model")  # a bare model has no configuration
    models = KeyAccess(models=frozenset({"small"}))
    assert models.allows(None, "small")
    assert models.allows("any", "small")
    assert not models.allows("any", "large")
    assert not models.allows(None, None)
    both = KeyAccess(configs=frozenset({"support"}), models=frozenset({"small"}))
    assert both.allows("support", "small")
    assert not both.allows("support", "large")  # the config moved to another model
    assert not both.allows(None, "small")
    nothing = KeyAccess(configs=frozenset())
    assert not nothing.allows("support", "small")


async def test_create_and_update_store_the_access(db: Engine[Any]) -> None:
    expires = datetime.now(UTC) + timedelta(days=30)
    created = await service.create_key(
        ApiKeyCreate(
            name="team",
            expires_at=expires,
            allowed_configs=["b", "a", "b"],
            allowed_models=["m"],
        )
    )
    assert created.allowed_configs == ["a", "b"]  # each once, sorted
    assert created.allowed_models == ["m"]
    assert created.expires_at is not None
    assert abs((created.expires_at - expires).total_seconds()) < 0.001
    principal = await service.authenticate(created.secret)
    assert principal.access == KeyAccess(configs=frozenset({"a", "b"}), models=frozenset({"m"}))

    # Only the fields sent change; null clears one.
    updated = await service.update_key(created.id, ApiKeyUpdate(allowed_models=None))
    assert updated.allowed_models is None
    assert updated.allowed_configs == ["a", "b"]
    assert updated.expires_at == created.expires_at
    update = msgspec.json.decode(b'{"expires_at": null, "allowed_configs": []}', type=ApiKeyUpdate)
    updated = await service.update_key(created.id, update)
    assert updated.expires_at is None
    assert updated.allowed_configs == []
    listed = {key.id: key for key in await service.list_keys()}
    assert listed[created.id] == updated

    with pytest.raises(NotFoundError):
        await service.update_key(uuid.uuid4(), ApiKeyUpdate(allowed_models=["m"]))
    with pytest.raises(InvalidInputError, match="expires_at is in the past"):
        await service.update_key(
            created.id, ApiKeyUpdate(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(InvalidInputError, match="past"):
        await service.create_key(
            ApiKeyCreate(name="late", expires_at=datetime.now(UTC) - timedelta(days=1))
        )


async def test_an_expired_key_is_refused_without_a_query_per_request(
    principals: PrincipalCache, db: Engine[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await service.create_key(
        ApiKeyCreate(name="short-lived", expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
    )
    await service.authenticate(created.secret)
    queries = 0
    real_fetch = service.fetch

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal queries
        queries += 1
        return await real_fetch(*args, **kwargs)

    monkeypatch.setattr(service, "fetch", counting)
    for _ in range(20):  # cached: no query while it lives
        await service.authenticate(created.secret)
    assert queries == 0
    assert created.expires_at is not None
    await asyncio.sleep(max(0.0, (created.expires_at - datetime.now(UTC)).total_seconds()))
    # The entry lived no longer than the key: the next request reads it, and is refused,
    # saying why (only the key's holder can ask).
    with pytest.raises(AuthenticationError, match="expired at"):
        await service.authenticate(created.secret)
    assert queries == 1


async def test_an_update_reaches_a_cached_key_at_once(principals: PrincipalCache) -> None:
    created = await service.create_key(ApiKeyCreate(name="cached"))
    assert (await service.authenticate(created.secret)).access.unrestricted
    await service.update_key(created.id, ApiKeyUpdate(allowed_models=["m"]))
    assert (await service.authenticate(created.secret)).access.models == frozenset({"m"})
    await service.update_key(
        created.id, ApiKeyUpdate(expires_at=datetime.now(UTC) + timedelta(milliseconds=50))
    )
    await asyncio.sleep(0.1)
    with pytest.raises(AuthenticationError, match="expired"):
        await service.authenticate(created.secret)
