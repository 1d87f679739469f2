from __future__ import annotations

import uuid

import msgspec
import pytest

from functions.core.db.tables import ApiKey
from functions.core.errors import AuthenticationError, InvalidInputError, NotFoundError
from functions.core.keys import service
from functions.core.keys.schemas import ApiKeyCreate


async def test_secret_round_trips_through_its_hash(db: object) -> None:
    created = await service.create_key(ApiKeyCreate(name="ci", scopes=["admin", "chat"]))
    assert created.secret.startswith("sb-")
    assert created.prefix == created.secret[: service.PREFIX_LENGTH]

    principal = await service.authenticate(created.secret)
    assert principal.key_id == created.id
    assert principal.scopes == frozenset({"admin", "chat"})
    assert principal.is_admin


async def test_plaintext_secret_is_stored_nowhere(db: object) -> None:
    created = await service.create_key(ApiKeyCreate(name="ci"))
    rows = await ApiKey.select()
    dumped = msgspec.json.encode(rows, enc_hook=str).decode()
    assert created.secret not in dumped
    assert created.secret[service.PREFIX_LENGTH :] not in dumped
    assert service.hash_secret(created.secret) in dumped


async def test_scopes_default_to_chat(db: object) -> None:
    created = await service.create_key(ApiKeyCreate(name="app"))
    assert created.scopes == ["chat"]
    assert not (await service.authenticate(created.secret)).is_admin


@pytest.mark.parametrize(
    "secret",
    ["", "not-a-key", "sb-short", "sb-" + "x" * 43],
)
async def test_bad_secrets_are_refused(db: object, secret: str) -> None:
    await service.create_key(ApiKeyCreate(name="real"))
    with pytest.raises(AuthenticationError):
        await service.authenticate(secret)


async def test_a_secret_with_the_right_prefix_but_wrong_tail_is_refused(db: object) -> None:
    created = await service.create_key(ApiKeyCreate(name="real"))
    forged = created.secret[: service.PREFIX_LENGTH] + "A" * 32
    with pytest.raises(AuthenticationError, match="unknown"):
        await service.authenticate(forged)


async def test_revoked_keys_stop_working_and_revoking_twice_keeps_the_first_time(
    db: object,
) -> None:
    created = await service.create_key(ApiKeyCreate(name="leaky"))
    first = await service.revoke_key(created.id)
    assert first.revoked_at is not None
    with pytest.raises(AuthenticationError, match="revoked"):
        await service.authenticate(created.secret)
    second = await service.revoke_key(created.id)
    assert second.revoked_at == first.revoked_at


async def test_revoking_an_unknown_key_is_not_found(db: object) -> None:
    with pytest.raises(NotFoundError):
        await service.revoke_key(uuid.uuid4())


async def test_list_keys_shows_prefixes_and_filters_revoked(db: object) -> None:
    keep = await service.create_key(ApiKeyCreate(name="keep"))
    gone = await service.create_key(ApiKeyCreate(name="gone"))
    await service.revoke_key(gone.id)
    everything = await service.list_keys()
    assert [k.name for k in everything] == ["keep", "gone"]
    active = await service.list_keys(include_revoked=False)
    assert [k.id for k in active] == [keep.id]
    assert not hasattr(active[0], "secret")


async def test_authentication_records_last_use(db: object) -> None:
    created = await service.create_key(ApiKeyCreate(name="app"))
    assert created.last_used_at is None
    await service.authenticate(created.secret)
    (listed,) = await service.list_keys()
    assert listed.last_used_at is not None


@pytest.mark.parametrize(
    "name", ["a\nb", "x\x1b[31m", "rtl\u202e", "   ", "x" * 101, "tag\U000e0041", "\U000110bd"]
)
async def test_a_name_built_in_python_is_checked_by_the_service(db: object, name: str) -> None:
    # A Struct built in code is not validated by msgspec: the service checks again.
    with pytest.raises(InvalidInputError) as info:
        await service.create_key(ApiKeyCreate(name=name))
    assert info.value.details == {"field": "name"}
    assert name not in {key.name for key in await service.list_keys()}
