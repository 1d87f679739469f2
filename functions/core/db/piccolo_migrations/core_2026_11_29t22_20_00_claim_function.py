"""PostgreSQL only: ``switchboard_claim_v1`` replaces ``switchboard_begin_exchange``.

The new function holds only the atomic steps of a send (see its file,
``functions/core/db/plpgsql/switchboard_claim_v1.sql``); configuration resolution and
the prompt rule moved to Python. Rolling back restores the old function.
"""

from importlib import import_module
from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-29T22:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "PostgreSQL function switchboard_claim_v1 (the atomic half of a send)"

SQL_FILE = Path(__file__).parent.parent / "plpgsql" / "switchboard_claim_v1.sql"
DROP = (
    "DROP FUNCTION IF EXISTS switchboard_claim_v1(uuid, uuid, varchar, bigint, jsonb, uuid, "
    "uuid, varchar, uuid, timestamptz, timestamptz, text, integer, varchar, varchar)"
)
PREVIOUS = import_module(
    "functions.core.db.piccolo_migrations.core_2026_11_26t05_30_00_begin_exchange_function"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def install() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            await engine.run_ddl(SQL_FILE.read_text())
            await engine.run_ddl(PREVIOUS.DROP)

    async def uninstall() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            await engine.run_ddl(PREVIOUS.CREATE)
            await engine.run_ddl(DROP)

    manager.add_raw(install)
    manager.add_raw_backwards(uninstall)
    return manager
