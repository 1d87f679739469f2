"""LLM configurations: immutable versions under a name, one of them the default.

Editing inserts version N+1; earlier versions stay so every message can say exactly which
version produced it. Archiving hides a name from listings and new conversations but keeps
its versions for the messages that reference them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from functions.core.configs.schemas import (
    RESERVED_EXTRA_KEYS,
    LLMConfigCreate,
    LLMConfigOut,
    LLMConfigSpec,
)
from functions.core.db.engine import write_transaction
from functions.core.db.sql import fetch
from functions.core.db.tables import LLMConfig
from functions.core.errors import ConflictError, InvalidInputError, NotFoundError

_COLUMNS = tuple(getattr(LLMConfig, name) for name in LLMConfigOut.__struct_fields__)


# Constant column names; every value goes in as a parameter.
_SELECT = "SELECT " + ", ".join(LLMConfigOut.__struct_fields__) + " FROM llm_config"  # noqa: S608


def _from_raw(row: dict[str, Any]) -> LLMConfigOut:
    # Hand-written SQL returns JSON columns as text on both engines.
    if isinstance(row["extra"], str):
        row = {**row, "extra": msgspec.json.decode(row["extra"])}
    return msgspec.convert(row, LLMConfigOut)


async def latest_version(name: str) -> LLMConfigOut | None:
    """The newest version of ``name`` (archived or not), or None."""
    rows = await fetch(_SELECT + " WHERE name = {} ORDER BY version DESC LIMIT 1", name)
    return _from_raw(rows[0]) if rows else None


def _check_extra(extra: dict[str, Any]) -> None:
    reserved = sorted(RESERVED_EXTRA_KEYS.intersection(extra))
    if reserved:
        raise InvalidInputError(
            f"extra may not set {', '.join(reserved)}: use the configuration's own fields",
            details={"field": "extra", "reserved": reserved},
        )


def _values(spec: LLMConfigSpec) -> dict[Any, Any]:
    return {
        LLMConfig.model: spec.model,
        LLMConfig.temperature: spec.temperature,
        LLMConfig.top_p: spec.top_p,
        LLMConfig.max_tokens: spec.max_tokens,
        LLMConfig.stop: spec.stop,
        LLMConfig.seed: spec.seed,
        LLMConfig.system_prompt: spec.system_prompt,
        LLMConfig.history_window: spec.history_window,
        LLMConfig.extra: spec.extra,
    }


async def _bump_epoch() -> None:
    """Count a configuration change, in the writer's transaction (see ``ConfigEpoch``)."""
    await fetch(
        "INSERT INTO config_epoch (id, epoch) VALUES (1, 1) "
        "ON CONFLICT (id) DO UPDATE SET epoch = config_epoch.epoch + 1"
    )


async def _insert_version(name: str, version: int, spec: LLMConfigSpec) -> uuid.UUID:
    if spec.is_default:
        await LLMConfig.update({LLMConfig.is_default: False}).where(LLMConfig.is_default.eq(True))
    row = LLMConfig(name=name, version=version, is_default=spec.is_default)
    for column, value in _values(spec).items():
        setattr(row, column._meta.name, value)
    await row.save()
    await _bump_epoch()
    return uuid.UUID(str(row.id))


async def create_config(data: LLMConfigCreate) -> LLMConfigOut:
    """Create version 1 of a new name. A name in use (even archived) is a conflict."""
    _check_extra(data.extra)
    async with write_transaction():
        if await LLMConfig.exists().where(LLMConfig.name == data.name):
            raise ConflictError(
                f"a configuration named {data.name!r} already exists; "
                "PUT /v1/configs/{name} creates a new version of it",
                details={"name": data.name},
            )
        config_id = await _insert_version(data.name, 1, data)
    return await get_config_by_id(config_id)


async def update_config(name: str, spec: LLMConfigSpec) -> LLMConfigOut:
    """Store ``spec`` as the next version of ``name``; the default flag follows the name."""
    _check_extra(spec.extra)
    async with write_transaction():
        latest = await latest_version(name)
        if latest is None or latest.archived_at is not None:
            raise NotFoundError(f"no configuration named {name!r}", details={"name": name})
        if latest.is_default and not spec.is_default:
            # A new version of the default stays the default; making another name the
            # default is how the default moves.
            spec = msgspec.structs.replace(spec, is_default=True)
        config_id = await _insert_version(name, latest.version + 1, spec)
    return await get_config_by_id(config_id)


async def get_config(name: str, version: int | None = None) -> LLMConfigOut:
    """The latest version of ``name`` (archived included), or the given ``version``."""
    if version is None:
        config = await latest_version(name)
    else:
        rows = await fetch(_SELECT + " WHERE name = {} AND version = {}", name, version)
        config = _from_raw(rows[0]) if rows else None
    if config is None:
        what = (
            f"version {version} of configuration {name!r}" if version else f"configuration {name!r}"
        )
        raise NotFoundError(f"no {what}", details={"name": name, "version": version})
    return config


async def get_config_by_id(config_id: uuid.UUID) -> LLMConfigOut:
    row = (
        await LLMConfig.select(*_COLUMNS)
        .where(LLMConfig.id == config_id)
        .first()
        .output(load_json=True)
    )
    if row is None:
        raise NotFoundError(f"no configuration version {config_id}")
    return msgspec.convert(row, LLMConfigOut)


async def list_configs(*, include_archived: bool = False) -> list[LLMConfigOut]:
    """The latest version of every configuration, by name."""
    rows = (
        await LLMConfig.select(*_COLUMNS)
        .order_by(LLMConfig.name)
        .order_by(LLMConfig.version, ascending=False)
        .output(load_json=True)
    )
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest.setdefault(row["name"], row)
    configs = msgspec.convert(list(latest.values()), list[LLMConfigOut])
    return [c for c in configs if include_archived or c.archived_at is None]


async def list_versions(name: str) -> list[LLMConfigOut]:
    rows = (
        await LLMConfig.select(*_COLUMNS)
        .where(LLMConfig.name == name)
        .order_by(LLMConfig.version)
        .output(load_json=True)
    )
    if not rows:
        raise NotFoundError(f"no configuration named {name!r}", details={"name": name})
    return msgspec.convert(rows, list[LLMConfigOut])


async def archive_config(name: str) -> LLMConfigOut:
    """Archive every version of ``name``; it stops being the default. Idempotent."""
    async with write_transaction():
        latest = await latest_version(name)
        if latest is None:
            raise NotFoundError(f"no configuration named {name!r}", details={"name": name})
        if latest.archived_at is None:
            await LLMConfig.update(
                {LLMConfig.archived_at: datetime.now(UTC), LLMConfig.is_default: False}
            ).where(LLMConfig.name == name)
            await _bump_epoch()
    return await get_config(name)


async def get_default_config() -> LLMConfigOut | None:
    rows = await fetch(_SELECT + " WHERE is_default = {} LIMIT 1", True)
    return _from_raw(rows[0]) if rows else None


def no_default_error() -> InvalidInputError:
    return InvalidInputError(
        "no configuration given and no default configuration is set: "
        'pass "config" or mark a configuration as the default',
        details={"field": "config"},
    )


def missing_error(name: str) -> NotFoundError:
    return NotFoundError(f"no configuration {name!r}", details={"name": name})


def archived_error(name: str) -> InvalidInputError:
    return InvalidInputError(
        f"configuration {name!r} is archived", details={"field": "config", "name": name}
    )


async def resolve_config(name: str | None) -> LLMConfigOut:
    """The version a new message should use: the latest of ``name``, else the default."""
    if name is None:
        default = await get_default_config()
        if default is None:
            raise no_default_error()
        return default
    config = await latest_version(name)
    if config is None:
        raise missing_error(name)
    if config.archived_at is not None:
        raise archived_error(name)
    return config
