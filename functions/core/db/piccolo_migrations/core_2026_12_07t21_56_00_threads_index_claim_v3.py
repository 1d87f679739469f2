"""Threading: the lookup's index, and ``switchboard_claim_v3`` (PostgreSQL) that writes
the chain hashes and checks a threaded send's tail (see its file,
``functions/core/db/plpgsql/switchboard_claim_v3.sql``).

The index is partial (``chain_hash IS NOT NULL``): only threaded sends' messages are in
it. ``switchboard_claim_v2`` stays installed: a process of the previous release still
calls it during a rolling deploy. Rolling back drops v3 and the index only.
"""

from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

from functions.core.db.raw_indexes import add_index_steps

ID = "2026-12-07T21:56:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "message_chain_hash_idx; PostgreSQL function switchboard_claim_v3 (threading)"

INDEXES = {
    "message_chain_hash_idx": (
        "CREATE INDEX IF NOT EXISTS message_chain_hash_idx ON message (chain_hash) "
        "WHERE chain_hash IS NOT NULL"
    ),
}
SQL_FILE = Path(__file__).parent.parent / "plpgsql" / "switchboard_claim_v3.sql"
DROP = (
    "DROP FUNCTION IF EXISTS switchboard_claim_v3(uuid, uuid, varchar, bigint, jsonb, uuid, "
    "uuid, varchar, uuid, timestamptz, timestamptz, text, integer, varchar, varchar, "
    "timestamptz, integer, uuid, uuid)"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    add_index_steps(manager, INDEXES)

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
