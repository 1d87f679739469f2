"""``stored_completion``'s index: one key's stored completions in creation order.

``GET /v1/chat/completions`` pages by ``(created_at, id)`` within a key, as a row
comparison, so this index bounds every page's scan whatever other keys store.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from functions.core.db.raw_indexes import add_index_steps

ID = "2026-12-08T02:06:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "stored_completion's (owner_key, created_at, id) index"

INDEXES = {
    "stored_completion_owner_created_idx": (
        "CREATE INDEX stored_completion_owner_created_idx "
        "ON stored_completion (owner_key, created_at, id)"
    ),
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    return add_index_steps(manager, INDEXES)
