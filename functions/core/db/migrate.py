"""Applying and undoing Piccolo migrations from code (the CLI, tests, the quick start).

Piccolo's runners print progress with ``print``; we capture that and report a structured
result instead, so ``switchboard db migrate`` can say exactly what it did.
"""

from __future__ import annotations

import contextlib
import functools
import io
from itertools import chain
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.apps.migrations.commands.backwards import BackwardsMigrationManager
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.apps.migrations.commands.new import AutoMigrationManager

from functions.core.db.engine import create_sqlite_file, using
from functions.core.db.errors import SchemaMissingError, as_database_error
from functions.core.db.sql import fetch
from functions.core.errors import SwitchboardError

if TYPE_CHECKING:
    from piccolo.engine.base import Engine

APP_NAME = "core"


class MigrationError(SwitchboardError):
    code = "migration_failed"


class MigrationReport(msgspec.Struct, frozen=True):
    applied: list[str]
    already_applied: list[str]
    output: str = ""


@functools.cache
def known_migrations() -> tuple[str, ...]:
    """Every migration id this release ships, in order (read once per process)."""
    from functions.core.db.piccolo_app import APP_CONFIG

    manager = BaseMigrationManager()
    modules = manager.get_migration_modules(APP_CONFIG.resolved_migrations_folder_path)
    return tuple(manager.get_migration_ids(modules))


async def applied_migrations() -> set[str]:
    """The ids recorded as applied; none when Piccolo's ``migration`` table is missing.

    A read only: Piccolo's own status check creates that table first, which would make
    ``switchboard db status`` (and a readiness probe) write to the database.
    """
    try:
        rows = await fetch(
            "SELECT name FROM migration WHERE app_name = {}", APP_NAME, savepoint=True
        )
    except Exception as exc:
        if isinstance(as_database_error(exc), SchemaMissingError):
            return set()
        raise
    return {str(row["name"]) for row in rows}


async def pending_migrations() -> list[str]:
    """Migrations of this release not applied to the current database, in order."""
    applied = await applied_migrations()
    return [mid for mid in known_migrations() if mid not in applied]


async def migration_status(engine: Engine[Any]) -> dict[str, bool]:
    """Each migration id, in order, and whether it has been applied. Writes nothing."""
    with using(engine):
        applied = await applied_migrations()
    return {mid: mid in applied for mid in known_migrations()}


async def migrate(engine: Engine[Any]) -> MigrationReport:
    """Apply every migration not yet applied, each in its own transaction.

    A SQLite file that does not exist yet is created, private to this user.
    """
    create_sqlite_file(engine)
    before = await migration_status(engine)
    captured = io.StringIO()
    with using(engine), contextlib.redirect_stdout(captured):
        result = await ForwardsMigrationManager(app_name=APP_NAME).run()
    if not result.success:
        raise MigrationError(f"migration failed: {result.message or captured.getvalue()}")
    after = await migration_status(engine)
    return MigrationReport(
        applied=[mid for mid, ran in after.items() if ran and not before.get(mid, False)],
        already_applied=[mid for mid, ran in before.items() if ran],
        output=captured.getvalue(),
    )


async def rollback(engine: Engine[Any], migration_id: str = "all") -> list[str]:
    """Undo migrations newest first down to ``migration_id`` (``all``: every one)."""
    before = await migration_status(engine)
    captured = io.StringIO()
    with using(engine), contextlib.redirect_stdout(captured):
        result = await BackwardsMigrationManager(
            app_name=APP_NAME, migration_id=migration_id, auto_agree=True
        ).run()
    if not result.success:
        raise MigrationError(f"rollback failed: {result.message or captured.getvalue()}")
    after = await migration_status(engine)
    return [mid for mid, ran in before.items() if ran and not after.get(mid, False)]


async def schema_drift(engine: Engine[Any]) -> list[str]:
    """Statements a new auto migration would contain; empty when tables match migrations."""
    manager = AutoMigrationManager()
    app_config = manager.get_app_config(app_name=APP_NAME)
    with using(engine), contextlib.redirect_stdout(io.StringIO()):
        alter = await manager.get_alter_statements(app_config=app_config)
    return list(chain.from_iterable(statement.statements for statement in alter))
