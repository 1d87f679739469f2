"""Key access: an expiry time and the configurations and models a key may use.

Every column is nullable and NULL means what a key could do before: it never expires,
and may use every configuration and model. Authentication reads them with the key (one
query, cached), so a send costs no extra read.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Array, Timestamptz, Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-08T01:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "api_key.expires_at, allowed_configs, allowed_models"

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


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    manager.add_column(
        table_class_name="ApiKey",
        tablename="api_key",
        column_name="expires_at",
        db_column_name="expires_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params=dict(_PARAMS),
        schema=None,
    )
    for name, length in (("allowed_configs", 100), ("allowed_models", 200)):
        manager.add_column(
            table_class_name="ApiKey",
            tablename="api_key",
            column_name=name,
            db_column_name=name,
            column_class_name="Array",
            column_class=Array,
            params={**_PARAMS, "base_column": Varchar(length=length)},
            schema=None,
        )
    return manager
