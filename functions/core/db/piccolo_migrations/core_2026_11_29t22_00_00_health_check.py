"""``health_check``: every upstream's verdict from each health check, newest first per upstream.

Piccolo runs a migration's raw statements before its ``add_table``, so the composite index
(which Piccolo cannot declare on a Table) is created by a manager that runs it after the
table, in the same transaction.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Boolean
from piccolo.columns.column_types import DoublePrecision
from piccolo.columns.column_types import JSONB
from piccolo.columns.column_types import Text
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.column_types import UUID
from piccolo.columns.column_types import Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.defaults.uuid import UUID4
from piccolo.columns.indexes import IndexMethod
from piccolo.engine import engine_finder

ID = "2026-11-29T22:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "health_check: recorded upstream health verdicts"

INDEX = "health_check_upstream_recency_idx"
CREATE_INDEX = f"CREATE INDEX {INDEX} ON health_check (upstream, checked_at DESC)"


class TableThenIndex(MigrationManager):
    """Creates the index after the table (and drops it before the table, going back)."""

    async def run(self, backwards: bool = False) -> None:
        if self.preview:
            await super().run(backwards=backwards)
            return
        engine = engine_finder()
        assert engine is not None
        # The manager's own transaction joins this one, so table and index are atomic.
        async with engine.transaction():
            if backwards:
                await engine.run_ddl(f"DROP INDEX IF EXISTS {INDEX}")
            await super().run(backwards=backwards)
            if not backwards:
                await engine.run_ddl(CREATE_INDEX)


async def forwards() -> MigrationManager:
    manager = TableThenIndex(migration_id=ID, app_name="core", description=DESCRIPTION)

    manager.add_table(
        class_name="HealthCheck",
        tablename="health_check",
        schema=None,
        columns=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="id",
        db_column_name="id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID4(),
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="checked_at",
        db_column_name="checked_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="upstream",
        db_column_name="upstream",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 500,
            "default": "",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="status",
        db_column_name="status",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 16,
            "default": "",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="latency_ms",
        db_column_name="latency_ms",
        column_class_name="DoublePrecision",
        column_class=DoublePrecision,
        params={
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="models",
        db_column_name="models",
        column_class_name="JSONB",
        column_class=JSONB,
        params={
            "default": "[]",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="gauges",
        db_column_name="gauges",
        column_class_name="JSONB",
        column_class=JSONB,
        params={
            "default": "{}",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="is_simulator",
        db_column_name="is_simulator",
        column_class_name="Boolean",
        column_class=Boolean,
        params={
            "default": False,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="HealthCheck",
        tablename="health_check",
        column_name="error",
        db_column_name="error",
        column_class_name="Text",
        column_class=Text,
        params={
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
