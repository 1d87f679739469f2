"""Stored chat completions: ``stored_completion``, a chat completion sent with ``store: true``.

One row per stored completion, keyed by its reply's ``message.id``, holding only what the
conversation's rows do not: that it is listed, its key and the request's ``metadata``. Its
index is in the next migration (raw SQL, which Piccolo runs before a migration's table
steps).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import JSONB, UUID, ForeignKey, Timestamptz
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.defaults.uuid import UUID4
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table

ID = "2026-12-08T02:05:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "stored_completion: chat completions sent with store: true, listed per key"


class ApiKey(Table, tablename="api_key"):
    id = UUID(primary_key=True)


class Conversation(Table, tablename="conversation"):
    id = UUID(primary_key=True)


COMMON: dict[str, object] = {
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
    table = {"table_class_name": "StoredCompletion", "tablename": "stored_completion"}
    manager.add_table(
        class_name="StoredCompletion", tablename="stored_completion", schema=None, columns=None
    )
    manager.add_column(
        **table,
        column_name="id",
        db_column_name="id",
        column_class_name="UUID",
        column_class=UUID,
        params={**COMMON, "default": UUID4(), "null": False, "primary_key": True},
        schema=None,
    )
    for column, references in (("owner_key", ApiKey), ("conversation", Conversation)):
        manager.add_column(
            **table,
            column_name=column,
            db_column_name=column,
            column_class_name="ForeignKey",
            column_class=ForeignKey,
            params={
                **COMMON,
                "references": references,
                "on_delete": OnDelete.cascade,
                "on_update": OnUpdate.cascade,
                "target_column": None,
                "null": True,
            },
            schema=None,
        )
    manager.add_column(
        **table,
        column_name="metadata",
        db_column_name="metadata",
        column_class_name="JSONB",
        column_class=JSONB,
        params={**COMMON, "default": "{}", "null": False},
        schema=None,
    )
    manager.add_column(
        **table,
        column_name="created_at",
        db_column_name="created_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={**COMMON, "default": TimestamptzNow(), "null": False},
        schema=None,
    )
    return manager
