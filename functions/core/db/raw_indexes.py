"""Raw-SQL index migrations: the steps every "indexes Piccolo cannot declare" migration takes.

Composite, ordered, partial and composite-unique indexes are written as SQL both engines
run; a migration names them in a dict and hands it here, so the create and drop steps are
written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from piccolo.engine import engine_finder

if TYPE_CHECKING:
    from collections.abc import Mapping

    from piccolo.apps.migrations.auto.migration_manager import MigrationManager


def add_index_steps(manager: MigrationManager, indexes: Mapping[str, str]) -> MigrationManager:
    """Create ``indexes`` (name to its ``CREATE INDEX``) going forwards, drop them going back."""

    async def create_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for ddl in indexes.values():
            await engine.run_ddl(ddl)

    async def drop_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for name in indexes:
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_indexes)
    manager.add_raw_backwards(drop_indexes)
    return manager
