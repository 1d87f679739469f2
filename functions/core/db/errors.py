"""Recognising database failures that are the operator's to fix, not a bug.

The CLI turns these into an exit code and one line; the web layer into a 503. Both ask
:func:`as_database_error` so the two agree on what "the database is down" means.
"""

from __future__ import annotations

import sqlite3

import asyncpg

from functions.core.errors import DatabaseUnavailableError

_UNREACHABLE = (
    OSError,  # connection refused, DNS failure, timeouts
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InvalidCatalogNameError,  # the database does not exist
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # unknown role, bad password
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # A connection the server's restart broke mid-use ("cannot perform operation:
    # another operation is in progress", stale prepared statements, ...).
    asyncpg.exceptions.InternalClientError,
)


class SchemaMissingError(DatabaseUnavailableError):
    code = "database_not_migrated"


def as_database_error(exc: BaseException) -> DatabaseUnavailableError | None:
    """The operator-facing error ``exc`` stands for, or ``None`` if it is something else."""
    if isinstance(exc, asyncpg.exceptions.UndefinedTableError) or (
        isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)
    ):
        return SchemaMissingError(
            "the database has no Switchboard tables yet: run `switchboard db migrate`"
        )
    if isinstance(exc, _UNREACHABLE) or (
        isinstance(exc, sqlite3.OperationalError)
        and ("unable to open" in str(exc) or "locked" in str(exc) or "disk" in str(exc))
    ):
        return DatabaseUnavailableError(f"the database is unavailable: {exc}")
    return None
