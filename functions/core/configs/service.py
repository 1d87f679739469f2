"""LLM configurations: immutable versions under a name, one of them the default.

Editing inserts version N+1; earlier versions stay so every message can say exactly which
version produced it. ``PUT`` replaces the whole definition; ``PATCH`` changes the fields it
names and keeps the rest. Archiving hides a name from listings and new conversations but
keeps its versions readable for the messages that reference them; unarchiving brings the
name back as it was. An archived name is neither free (``POST`` is a conflict) nor editable
until it is unarchived: each refusal says so.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from functions.core.configs.schemas import (
    RESERVED_EXTRA_KEYS,
    LLMConfigCreate,
    LLMConfigOut,
    LLMConfigPatch,
    LLMConfigSpec,
)
from functions.core.db.engine import write_transaction
from functions.core.db.sql import fetch, page_end, size_sql
from functions.core.db.tables import LLMConfig
from functions.core.errors import ConflictError, InvalidInputError, NotFoundError
from functions.core.llm.errors import LLMError, ModelNotServedError
from functions.core.logging import get_logger
from functions.core.schemas import (
    DEFAULT_PAGE_BYTES,
    Page,
    bounded_page,
    decode_cursor,
    encode_cursor,
)

if TYPE_CHECKING:
    from functions.core.llm.client import LLMClient

MAX_PAGE_SIZE = 200
log = get_logger(__name__)

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


MAX_EXTRA_BYTES = 64 * 1024


def _check_extra(extra: dict[str, Any]) -> None:
    size = len(msgspec.json.encode(extra))
    if size > MAX_EXTRA_BYTES:
        raise InvalidInputError(
            f"extra is {size} bytes encoded; the limit is {MAX_EXTRA_BYTES}",
            details={"field": "extra"},
        )
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
        LLMConfig.max_concurrent: spec.max_concurrent,
    }


async def read_epoch() -> int:
    """How many configuration changes there have been (see ``ConfigEpoch``)."""
    rows = await fetch("SELECT coalesce(max(epoch), 0) AS epoch FROM config_epoch")
    return int(rows[0]["epoch"])


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


def _archived(name: str, doing: str) -> ConflictError:
    return ConflictError(
        f"configuration {name!r} is archived, so it cannot {doing}: "
        f"POST /v1/configs/{name}/unarchive restores it (admin)",
        details={"name": name, "archived": True},
    )


def _missing(name: str) -> NotFoundError:
    return NotFoundError(
        f"no configuration named {name!r}; POST /v1/configs creates one",
        details={"name": name},
    )


async def create_config(data: LLMConfigCreate) -> LLMConfigOut:
    """Create version 1 of a new name. A name in use (even archived) is a conflict."""
    _check_extra(data.extra)
    async with write_transaction():
        latest = await latest_version(data.name)
        if latest is not None and latest.archived_at is not None:
            raise _archived(data.name, "be created again")
        if latest is not None:
            raise ConflictError(
                f"a configuration named {data.name!r} already exists; "
                f"PUT or PATCH /v1/configs/{data.name} stores a new version of it",
                details={"name": data.name},
            )
        config_id = await _insert_version(data.name, 1, data)
    return await get_config_by_id(config_id)


async def model_warnings(config: LLMConfigOut, llm: LLMClient | None) -> list[str]:
    """What the writer of ``config`` should know before a send fails: its model is served
    by no upstream (the send path's own rule, ``LLMClient.require_model``), or no model
    list can be read to tell. Stored all the same: a model may be loaded later."""
    if llm is None:
        return []
    try:
        await llm.require_model(config.model)
    except ModelNotServedError as exc:
        served = ", ".join(exc.details.get("known_models", [])) or "none"
        warning = (
            f"no LLM upstream serves model {config.model!r} (served: {served}): sends with "
            f"{config.name!r} fail with model_not_served until it is served or "
            "the configuration names a served model"
        )
    except LLMError as exc:
        warning = (
            f"could not check that model {config.model!r} is served: {exc.message}; "
            f"sends with {config.name!r} fail until an upstream serves it"
        )
    else:
        return []
    log.warning(
        "config.model_not_served", config=config.name, version=config.version, model=config.model
    )
    return [warning]


async def _latest_editable(name: str) -> LLMConfigOut:
    latest = await latest_version(name)
    if latest is None:
        raise _missing(name)
    if latest.archived_at is not None:
        raise _archived(name, "be edited")
    return latest


async def _store_next(name: str, latest: LLMConfigOut, spec: LLMConfigSpec) -> uuid.UUID:
    if latest.is_default and not spec.is_default:
        # A new version of the default stays the default; making another name the
        # default is how the default moves.
        spec = msgspec.structs.replace(spec, is_default=True)
    return await _insert_version(name, latest.version + 1, spec)


async def update_config(name: str, spec: LLMConfigSpec) -> LLMConfigOut:
    """Store ``spec`` as the next version of ``name``: the whole definition, so a field left
    out takes its default (``PUT``); the default flag follows the name."""
    _check_extra(spec.extra)
    async with write_transaction():
        latest = await _latest_editable(name)
        config_id = await _store_next(name, latest, spec)
    return await get_config_by_id(config_id)


async def patch_config(name: str, patch: LLMConfigPatch) -> LLMConfigOut:
    """Store the next version of ``name``: the latest one with the fields ``patch`` sets
    (``null`` clears a field that may be empty) (``PATCH``)."""
    async with write_transaction():
        latest = await _latest_editable(name)
        current = {field: getattr(latest, field) for field in LLMConfigSpec.__struct_fields__}
        changes = {
            field: value
            for field in LLMConfigPatch.__struct_fields__
            if (value := getattr(patch, field)) is not msgspec.UNSET
        }
        spec = msgspec.convert(current | changes, LLMConfigSpec)
        _check_extra(spec.extra)
        config_id = await _store_next(name, latest, spec)
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
    """The latest version of every configuration, by name (for the CLI; HTTP pages)."""
    configs: list[LLMConfigOut] = []
    cursor = None
    while True:
        page = await page_configs(
            include_archived=include_archived, limit=MAX_PAGE_SIZE, cursor=cursor
        )
        configs.extend(page.data)
        if page.next_cursor is None:
            return configs
        cursor = page.next_cursor


# The latest version of each name, by name: the (name, version) index bounds the scan.
_IS_LATEST = (
    " AS c WHERE version = (SELECT max(version) FROM llm_config AS v WHERE v.name = c.name)"
)
_LATEST = _SELECT + _IS_LATEST
# What a version weighs in a page: its free-text and JSON columns.
_SIZE_COLUMNS = ("system_prompt", "stop", "extra")


def _latest_sizes() -> str:
    size = size_sql(_SIZE_COLUMNS)
    return "SELECT name, " + size + " AS size FROM llm_config" + _IS_LATEST  # noqa: S608


async def page_configs(
    *,
    include_archived: bool = False,
    limit: int = 50,
    cursor: str | None = None,
    max_bytes: int = DEFAULT_PAGE_BYTES,
) -> Page[LLMConfigOut]:
    """One page of the latest version of every configuration, by name: at most ``limit``
    and about ``max_bytes`` of them (see :func:`page_versions`)."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    where, args = "", list[Any]()
    if cursor is not None:
        (after,) = decode_cursor(cursor, "configs", tuple[str])
        where += " AND name > {}"
        args.append(after)
    if not include_archived:
        where += " AND archived_at IS NULL"
    sizes = await fetch(_latest_sizes() + where + " ORDER BY name LIMIT {}", *args, limit + 1)
    last, more = page_end(sizes, "name", limit=limit, max_bytes=max_bytes)
    if last is None:
        return Page(data=[])
    rows = await fetch(_LATEST + where + " AND name <= {} ORDER BY name", *args, last)
    return bounded_page(
        [_from_raw(row) for row in rows],
        more=more,
        max_bytes=max_bytes,
        cursor=lambda config: encode_cursor("configs", config.name),
    )


async def list_versions(name: str) -> list[LLMConfigOut]:
    """Every version of ``name``, oldest first."""
    versions: list[LLMConfigOut] = []
    cursor = None
    while True:
        page = await page_versions(name, limit=MAX_PAGE_SIZE, cursor=cursor)
        versions.extend(page.data)
        if page.next_cursor is None:
            return versions
        cursor = page.next_cursor


async def page_versions(
    name: str, *, limit: int = 50, cursor: str | None = None, max_bytes: int = DEFAULT_PAGE_BYTES
) -> Page[LLMConfigOut]:
    """One page of the versions of ``name``, oldest first; 404 if the name never existed.

    At most ``limit`` versions and at most ``max_bytes`` of JSON as sent, but always at
    least one: the sizes are read first, so a page of large versions costs what it
    returns, not ``limit`` times the largest (:func:`bounded_page`).
    """
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    after = 0 if cursor is None else decode_cursor(cursor, "versions", tuple[int])[0]
    sizes = await fetch(
        "SELECT version, " + size_sql(_SIZE_COLUMNS) + " AS size FROM llm_config "  # noqa: S608
        "WHERE name = {} AND version > {} ORDER BY version LIMIT {}",
        name,
        after,
        limit + 1,
    )
    if not sizes and await latest_version(name) is None:
        raise _missing(name)
    last, more = page_end(sizes, "version", limit=limit, max_bytes=max_bytes)
    if last is None:
        return Page(data=[])
    rows = await fetch(
        _SELECT + " WHERE name = {} AND version > {} AND version <= {} ORDER BY version",
        name,
        after,
        last,
    )
    return bounded_page(
        [_from_raw(row) for row in rows],
        more=more,
        max_bytes=max_bytes,
        cursor=lambda config: encode_cursor("versions", config.version),
    )


async def archive_config(name: str) -> LLMConfigOut:
    """Archive every version of ``name``; it stops being the default. Idempotent."""
    async with write_transaction():
        latest = await latest_version(name)
        if latest is None:
            raise _missing(name)
        if latest.archived_at is None:
            await LLMConfig.update(
                {LLMConfig.archived_at: datetime.now(UTC), LLMConfig.is_default: False}
            ).where(LLMConfig.name == name)
            await _bump_epoch()
    return await get_config(name)


async def unarchive_config(name: str) -> LLMConfigOut:
    """Bring an archived name back, every version as it was (not as the default).
    Idempotent."""
    async with write_transaction():
        latest = await latest_version(name)
        if latest is None:
            raise _missing(name)
        if latest.archived_at is not None:
            await LLMConfig.update({LLMConfig.archived_at: None}).where(LLMConfig.name == name)
            await _bump_epoch()
    return await get_config(name)


async def get_default_config() -> LLMConfigOut | None:
    rows = await fetch(_SELECT + " WHERE is_default = {} LIMIT 1", True)
    return _from_raw(rows[0]) if rows else None


def no_default_error() -> InvalidInputError:
    return InvalidInputError(
        "no configuration named and no default configuration is set: name one in "
        '"config" (POST or PATCH /v1/conversations), or make one the default '
        '(PATCH /v1/configs/{name} with {"is_default": true}, admin)',
        details={"field": "config"},
    )


def missing_error(name: str) -> NotFoundError:
    return NotFoundError(f"no configuration {name!r}", details={"name": name})


def archived_error(name: str) -> InvalidInputError:
    return InvalidInputError(
        f"configuration {name!r} is archived: restore it (POST /v1/configs/{name}/unarchive, "
        'admin) or use another one (PATCH /v1/conversations/{id} with {"config": ...})',
        details={"field": "config", "name": name, "archived": True},
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
