"""PostgreSQL only: ``switchboard_claim_v2`` stores each reply's own bound (``stale_after``)
and judges the previous pending reply by it (see its file,
``functions/core/db/plpgsql/switchboard_claim_v2.sql``).

``switchboard_claim_v1`` stays installed: a process of the previous release still calls
it during a rolling deploy, and the replies it stores (without a bound) are judged as
before. Rolling back drops v2 only.
"""

from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T18:41:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "PostgreSQL function switchboard_claim_v2 (each reply carries its owner's bound)"

SQL_FILE = Path(__file__).parent.parent / "plpgsql" / "switchboard_claim_v2.sql"
DROP = (
    "DROP FUNCTION IF EXISTS switchboard_claim_v2(uuid, uuid, varchar, bigint, jsonb, uuid, "
    "uuid, varchar, uuid, timestamptz, timestamptz, text, integer, varchar, varchar, "
    "timestamptz)"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def install() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            await engine.run_ddl(SQL_FILE.read_text())

    async def uninstall() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            await engine.run_ddl(DROP)

    manager.add_raw(install)
    manager.add_raw_backwards(uninstall)
    return manager
