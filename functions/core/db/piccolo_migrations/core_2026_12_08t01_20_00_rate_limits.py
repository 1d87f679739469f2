"""Limits: a key's rates, concurrency and token budgets; a configuration's concurrency cap.

Every column is nullable: NULL means "the gateway's default" for a key
(``SWITCHBOARD_LIMIT_DEFAULT_*``, unlimited when unset) and "no cap" for a configuration,
so existing rows keep working as before. Counters live in the limiter (memory or Redis),
never here: a row is read when a key's limits are first needed, not on every send.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import BigInt, Integer
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-08T01:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "api_key limits (rates, concurrency, budgets); llm_config.max_concurrent"

_PARAMS = {
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

_KEY_COLUMNS = (
    ("requests_per_minute", Integer),
    ("tokens_per_minute", BigInt),
    ("max_concurrent", Integer),
    ("tokens_per_day", BigInt),
    ("tokens_per_month", BigInt),
)


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    for name, column in _KEY_COLUMNS:
        manager.add_column(
            table_class_name="ApiKey",
            tablename="api_key",
            column_name=name,
            db_column_name=name,
            column_class_name=column.__name__,
            column_class=column,
            params=dict(_PARAMS),
            schema=None,
        )
    manager.add_column(
        table_class_name="LLMConfig",
        tablename="llm_config",
        column_name="max_concurrent",
        db_column_name="max_concurrent",
        column_class_name="Integer",
        column_class=Integer,
        params=dict(_PARAMS),
        schema=None,
    )
    return manager
