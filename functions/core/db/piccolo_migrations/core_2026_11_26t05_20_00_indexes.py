"""Indexes Piccolo cannot declare on a Table: composite, ordered and partial ones.

Written as raw SQL that PostgreSQL and SQLite both accept.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T05:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Composite and partial indexes for the functions' queries"

INDEXES = {
    # The order of a conversation's history; also serialises sequence numbers.
    "message_conversation_seq_key": (
        "CREATE UNIQUE INDEX message_conversation_seq_key ON message (conversation, seq)"
    ),
    "llm_config_name_version_key": (
        "CREATE UNIQUE INDEX llm_config_name_version_key ON llm_config (name, version)"
    ),
    # A key's conversations, newest first, with a stable tiebreak for cursor pagination.
    "conversation_owner_recency_idx": (
        "CREATE INDEX conversation_owner_recency_idx "
        "ON conversation (owner_key, updated_at DESC, id DESC)"
    ),
    # At most one default configuration row.
    "llm_config_one_default_idx": (
        "CREATE UNIQUE INDEX llm_config_one_default_idx ON llm_config (is_default) WHERE is_default"
    ),
    # Exports page through messages by time.
    "message_created_id_idx": "CREATE INDEX message_created_id_idx ON message (created_at, id)",
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def create_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for ddl in INDEXES.values():
            await engine.run_ddl(ddl)

    async def drop_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for name in INDEXES:
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_indexes)
    manager.add_raw_backwards(drop_indexes)
    return manager
