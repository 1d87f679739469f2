"""Fresh, migrated test databases: one PostgreSQL database and one SQLite file per run."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    """The maintenance URL ``make test`` found (``scripts/with-postgres.sh``)."""
    return os.environ.get("SWITCHBOARD_TEST_DATABASE_URL", DEFAULT_SERVER_URL)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_postgres_database(prefix: str = "switchboard_test") -> str:
    """Create an empty database with a unique name; return its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(server_url(), name)


async def drop_postgres_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(server_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def sqlite_url(directory: Path, name: str = "switchboard.sqlite") -> str:
    return f"sqlite:///{directory / name}"
