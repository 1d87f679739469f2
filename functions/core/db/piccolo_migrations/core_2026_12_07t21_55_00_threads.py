"""Threading (``functions.core.threads``): the columns.

- ``message.chain_hash``: the chain hash of the history ending on the message (16 bytes,
  ``bytea``/``BLOB``), set by threaded sends;
- ``conversation.forked_from_conversation_id`` / ``forked_from_message_id``: a branch's
  fork point (plain ids, not foreign keys).

Existing rows stay NULL, not backfilled: a hash is salted with the key and covers the
history exactly as a client resends it, so only sends that came threaded can match.
Table steps only: the index and the claim that writes them are in the next migration.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import UUID, Bytea
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-07T21:55:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "message.chain_hash, conversation.forked_from_* (threading)"

PARAMS: dict[str, object] = {
    "default": None,
    "null": True,
    "primary_key": False,
    "unique": False,
    "index": False,
    "index_method": IndexMethod.btree,
    "choices": None,
    "db_column_name": None,
    "secret": False,
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    manager.add_column(
        table_class_name="Message",
        tablename="message",
        column_name="chain_hash",
        db_column_name="chain_hash",
        column_class_name="Bytea",
        column_class=Bytea,
        params=PARAMS,
        schema=None,
    )
    for column in ("forked_from_conversation_id", "forked_from_message_id"):
        manager.add_column(
            table_class_name="Conversation",
            tablename="conversation",
            column_name=column,
            db_column_name=column,
            column_class_name="UUID",
            column_class=UUID,
            params=PARAMS,
            schema=None,
        )
    return manager
