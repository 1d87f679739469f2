"""The index incremental history exports walk: messages in the order they finished.

An export takes every message finished after its series' watermark, in batches by keyset
pagination over ``(completed_at, id)`` (``functions.core.exports.source``). Raw SQL that
PostgreSQL and SQLite both run (a migration of its own: Piccolo runs a migration's raw steps
before its table steps).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from functions.core.db.raw_indexes import add_index_steps

ID = "2026-11-29T23:01:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Messages by completion, for incremental exports"

INDEXES = {
    # Pending replies (completed_at NULL) are not in the scan; they join it once finished.
    "message_completed_id_idx": (
        "CREATE INDEX message_completed_id_idx ON message (completed_at, id)"
    ),
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    return add_index_steps(manager, INDEXES)
