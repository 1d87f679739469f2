"""API keys: create, list, revoke, and authenticate a presented secret.

Secrets are 256-bit random tokens, so a single SHA-256 is the right hash (a slow KDF guards
low-entropy passwords, not these). Lookup goes by the displayable prefix; the stored hash
is compared in constant time. The plaintext exists only in the ``ApiKeyCreated`` result.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UnsetType

from functions.core.db.sql import fetch
from functions.core.db.tables import ApiKey
from functions.core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from functions.core.keys import revocations
from functions.core.keys.cache import current_principals
from functions.core.keys.schemas import (
    LIMIT_FIELDS,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyUpdate,
    KeyAccess,
    KeyLimits,
    Principal,
    name_problem,
    name_skeleton,
)

if TYPE_CHECKING:
    import uuid

SECRET_PREFIX = "sb-"
PREFIX_LENGTH = 12  # "sb-" plus 9 random characters: enough to find the row, useless alone
# Write last_used_at at most this often per key, so authentication stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)

_KEY_COLUMNS = (
    ApiKey.id,
    ApiKey.name,
    ApiKey.prefix,
    ApiKey.scopes,
    ApiKey.created_at,
    ApiKey.last_used_at,
    ApiKey.revoked_at,
    ApiKey.expires_at,
    ApiKey.allowed_configs,
    ApiKey.allowed_models,
    *(getattr(ApiKey, field) for field in LIMIT_FIELDS),
)


def _key_out(row: dict[str, Any]) -> ApiKeyOut:
    """A row as a key: its limit columns nested under ``limits``."""
    limits = {field: row.pop(field) for field in LIMIT_FIELDS}
    return msgspec.convert({**row, "limits": limits}, ApiKeyOut)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


async def create_key(data: ApiKeyCreate) -> ApiKeyCreated:
    """Create a key and return it with its secret, the only time the secret is available.

    The name is checked here too, whole: a Struct built in Python is not validated, and
    the schema's pattern covers only the Basic Multilingual Plane.
    """
    if (problem := name_problem(data.name)) is not None:
        raise InvalidInputError(f"invalid name: {problem}", details={"field": "name"})
    name = data.name.strip()
    _check_expiry(data.expires_at)
    await _refuse_lookalike(name)
    secret = new_secret()
    scopes = sorted(set(data.scopes))
    row = ApiKey(
        name=name,
        prefix=secret[:PREFIX_LENGTH],
        key_hash=hash_secret(secret),
        scopes=scopes,
        expires_at=data.expires_at,
        allowed_configs=_access_list(data.allowed_configs),
        allowed_models=_access_list(data.allowed_models),
        **msgspec.structs.asdict(data.limits),
    )
    await row.save()
    key = await _get(row.id)
    return ApiKeyCreated(**msgspec.structs.asdict(key), secret=secret)


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidInputError(
            "expires_at is in the past: give a time to come (or null: never)",
            details={"field": "expires_at"},
        )


def _access_list(names: list[str] | None) -> list[str] | None:
    """A list as stored: sorted, each name once (None stays None: any)."""
    return None if names is None else sorted(set(names))


async def update_key(key_id: uuid.UUID, data: ApiKeyUpdate) -> ApiKeyOut:
    """Change a key's expiry or the configurations and models it may use (the fields
    ``data`` holds). Every serving process drops the key from its cache at once, as on a
    revocation, so the next request is judged by the new values."""
    changes: dict[Any, Any] = {}
    if not isinstance(data.expires_at, UnsetType):
        _check_expiry(data.expires_at)
        changes[ApiKey.expires_at] = data.expires_at
    if not isinstance(data.allowed_configs, UnsetType):
        changes[ApiKey.allowed_configs] = _access_list(data.allowed_configs)
    if not isinstance(data.allowed_models, UnsetType):
        changes[ApiKey.allowed_models] = _access_list(data.allowed_models)
    await _get(key_id)
    if changes:
        current_principals().forget(key_id)
        await ApiKey.update(changes).where(ApiKey.id == key_id)
        await revocations.announce(key_id)
    return await _get(key_id)


async def _refuse_lookalike(name: str) -> None:
    """Refuse a name that looks like an active key's without being it (``Admin``, or
    ``admin`` in full-width letters, beside ``admin``), so ``keys list`` and ``--owner
    NAME`` never show or pick one for the other. The same name again is allowed: a key is
    rotated by creating its successor before revoking it."""
    skeleton = name_skeleton(name)
    rows = await ApiKey.select(ApiKey.id, ApiKey.name).where(ApiKey.revoked_at.is_null())
    for row in rows:
        if row["name"] != name and name_skeleton(row["name"]) == skeleton:
            raise ConflictError(
                f"the name looks like that of active key {row['id']}: choose a name that "
                "differs visibly (not only in case or letter width), or revoke that key",
                details={"field": "name", "key_id": str(row["id"])},
            )


async def list_keys(*, include_revoked: bool = True) -> list[ApiKeyOut]:
    query = ApiKey.select(*_KEY_COLUMNS).order_by(ApiKey.created_at)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_null())
    return [_key_out(row) for row in await query]


async def revoke_key(key_id: uuid.UUID) -> ApiKeyOut:
    """Revoke a key; every serving process refuses it from its next request (see
    :mod:`functions.core.keys.revocations`). Revoking twice keeps the first time."""
    current_principals().forget(key_id)
    await ApiKey.update({ApiKey.revoked_at: datetime.now(UTC)}).where(
        (ApiKey.id == key_id) & ApiKey.revoked_at.is_null()
    )
    revoked = await _get(key_id)
    await revocations.announce(key_id)
    return revoked


async def find_key(secret: str) -> ApiKeyOut | None:
    """The key a secret belongs to, revoked or not (None if unknown); records no use."""
    row = (
        await ApiKey.select(*_KEY_COLUMNS)
        .where((ApiKey.prefix == secret[:PREFIX_LENGTH]) & (ApiKey.key_hash == hash_secret(secret)))
        .first()
    )
    return None if row is None else _key_out(row)


async def _get(key_id: uuid.UUID) -> ApiKeyOut:
    row = await ApiKey.select(*_KEY_COLUMNS).where(ApiKey.id == key_id).first()
    if row is None:
        raise NotFoundError(f"API key {key_id} does not exist", details={"id": str(key_id)})
    return _key_out(row)


async def set_limits(key_id: uuid.UUID, limits: KeyLimits) -> ApiKeyOut:
    """Replace a key's limits (a null field: the gateway's default). Serving processes
    read a key's limits again at most a few seconds after (``limits.book``)."""
    await _get(key_id)
    await ApiKey.update(
        {getattr(ApiKey, field): value for field, value in msgspec.structs.asdict(limits).items()}
    ).where(ApiKey.id == key_id)
    return await _get(key_id)


async def key_limits(key_id: uuid.UUID) -> KeyLimits | None:
    """A key's own limits as stored (None: no such key)."""
    row = (
        await ApiKey.select(*(getattr(ApiKey, field) for field in LIMIT_FIELDS))
        .where(ApiKey.id == key_id)
        .first()
    )
    return None if row is None else msgspec.convert(row, KeyLimits)


async def authenticate(secret: str) -> Principal:
    """Resolve a presented secret to its key, or raise :class:`AuthenticationError`."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) < PREFIX_LENGTH + 8:
        raise AuthenticationError(
            "malformed API key: expected 'Authorization: Bearer sb-...'",
        )
    presented = hash_secret(secret)
    principals = current_principals()
    # Read before the query: a revocation committed after it changes the mark.
    mark = revocations.read_mark(principals.marker) if principals.enabled else None
    cached = principals.get(presented, mark)
    if cached is not None:
        return cached
    candidates = await fetch(
        "SELECT id, name, key_hash, scopes, revoked_at, last_used_at, expires_at, "
        "allowed_configs, allowed_models FROM api_key WHERE prefix = {}",
        secret[:PREFIX_LENGTH],
    )
    match = None
    for row in candidates:
        # Compare every candidate so timing does not depend on which one matched.
        if hmac.compare_digest(row["key_hash"], presented):
            match = row
    if match is None:
        raise AuthenticationError("unknown API key")
    if match["revoked_at"] is not None:
        raise AuthenticationError("this API key has been revoked")
    now = datetime.now(UTC)
    expires_at = _aware(match["expires_at"])
    if expires_at is not None and expires_at <= now:
        # Only the key's holder can see this (it takes the secret), as with a revocation.
        raise AuthenticationError(f"this API key expired at {expires_at:%Y-%m-%dT%H:%M:%SZ}")
    last_used = match["last_used_at"]
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        await fetch("UPDATE api_key SET last_used_at = {} WHERE id = {}", now, match["id"])
    principal = Principal(
        key_id=match["id"],
        name=match["name"],
        scopes=frozenset(match["scopes"]),
        access=KeyAccess(
            configs=_names(match["allowed_configs"]), models=_names(match["allowed_models"])
        ),
        expires_at=expires_at,
    )
    principals.put(presented, principal, mark)
    return principal


def _names(stored: Any) -> frozenset[str] | None:
    """An access list as the engine returns it (a list; JSON text on SQLite)."""
    if stored is None:
        return None
    return frozenset(msgspec.json.decode(stored) if isinstance(stored, str) else stored)


def _aware(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite returns its text)."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
