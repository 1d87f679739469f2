"""Indexes for leases and idempotency that Piccolo cannot declare: unique composite, partial.

Raw SQL that PostgreSQL and SQLite both run (a migration of its own: Piccolo runs a
migration's raw steps before its table steps).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from functions.core.db.raw_indexes import add_index_steps

ID = "2026-11-29T22:11:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Unique idempotency keys per owner; the pending-replies index"

INDEXES = {
    "idempotency_key_owner_key_idx": (
        "CREATE UNIQUE INDEX idempotency_key_owner_key_idx ON idempotency_key (owner_key, key)"
    ),
    # Pruning old keys.
    "idempotency_key_created_idx": (
        "CREATE INDEX idempotency_key_created_idx ON idempotency_key (created_at)"
    ),
    # The sweep looks only at pending replies, a handful among millions of messages.
    "message_pending_idx": (
        "CREATE INDEX message_pending_idx ON message (created_at) WHERE status = 'pending'"
    ),
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    return add_index_steps(manager, INDEXES)
