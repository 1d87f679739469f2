from __future__ import annotations

import msgspec
import pytest

from functions.core.configs import service
from functions.core.configs.schemas import LLMConfigCreate, LLMConfigSpec
from functions.core.errors import ConflictError, InvalidInputError, NotFoundError


def spec(**overrides: object) -> LLMConfigSpec:
    return msgspec.convert({"model": "sim-model", **overrides}, LLMConfigSpec)


def create(config_name: str, **overrides: object) -> LLMConfigCreate:
    return msgspec.convert(
        {"name": config_name, "model": "sim-model", **overrides}, LLMConfigCreate
    )


async def test_editing_creates_a_new_version_and_keeps_the_old(db: object) -> None:
    v1 = await service.create_config(create("support", temperature=0.2, system_prompt="Be kind."))
    v2 = await service.update_config("support", spec(temperature=0.7, stop=["\n\n"]))
    assert (v1.version, v2.version) == (1, 2)
    assert v1.id != v2.id

    assert (await service.get_config("support")).id == v2.id
    old = await service.get_config("support", version=1)
    assert old.temperature == 0.2
    assert old.system_prompt == "Be kind."
    assert [c.version for c in await service.list_versions("support")] == [1, 2]


async def test_listing_shows_the_latest_version_of_each_name(db: object) -> None:
    await service.create_config(create("a"))
    await service.create_config(create("b"))
    await service.update_config("a", spec(model="other"))
    listed = {c.name: (c.version, c.model) for c in await service.list_configs()}
    assert listed == {"a": (2, "other"), "b": (1, "sim-model")}


async def test_one_default_at_a_time_and_it_follows_new_versions(db: object) -> None:
    await service.create_config(create("first", is_default=True))
    assert (await service.get_default_config()).name == "first"  # type: ignore[union-attr]
    await service.update_config("first", spec(temperature=1.0))
    default = await service.get_default_config()
    assert default is not None
    assert (default.name, default.version) == ("first", 2)

    await service.create_config(create("second", is_default=True))
    default = await service.get_default_config()
    assert default is not None
    assert default.name == "second"
    assert not (await service.get_config("first")).is_default


async def test_duplicate_names_conflict(db: object) -> None:
    await service.create_config(create("dup"))
    with pytest.raises(ConflictError):
        await service.create_config(create("dup"))


async def test_archived_configs_leave_listings_and_cannot_be_resolved(db: object) -> None:
    await service.create_config(create("old", is_default=True))
    archived = await service.archive_config("old")
    assert archived.archived_at is not None
    assert not archived.is_default
    assert await service.list_configs() == []
    assert [c.name for c in await service.list_configs(include_archived=True)] == ["old"]
    with pytest.raises(InvalidInputError, match="archived"):
        await service.resolve_config("old")
    with pytest.raises(ConflictError, match="unarchive"):
        await service.update_config("old", spec())


async def test_resolve_without_a_name_needs_a_default(db: object) -> None:
    with pytest.raises(InvalidInputError, match="no default"):
        await service.resolve_config(None)
    await service.create_config(create("dflt", is_default=True))
    assert (await service.resolve_config(None)).name == "dflt"


async def test_unknown_names_and_versions_are_not_found(db: object) -> None:
    with pytest.raises(NotFoundError):
        await service.get_config("nope")
    await service.create_config(create("there"))
    with pytest.raises(NotFoundError, match="version 9"):
        await service.get_config("there", version=9)


async def test_extra_parameters_pass_through_but_cannot_override_core_fields(db: object) -> None:
    config = await service.create_config(create("x", extra={"top_k": 40}, temperature=0.5))
    assert config.extra == {"top_k": 40}
    assert config.sampling() == {"temperature": 0.5}
    assert config.sampling({"temperature": 0.1, "seed": 7}) == {"temperature": 0.1, "seed": 7}
    with pytest.raises(InvalidInputError, match="messages"):
        await service.create_config(create("y", extra={"messages": []}))


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("top_p", 0), ("max_tokens", 0), ("name", "Has Spaces")],
)
def test_invalid_values_are_rejected_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(msgspec.ValidationError, match=field):
        create("ok", **{field: value})


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="temprature"):
        create("ok", temprature=0.3)
