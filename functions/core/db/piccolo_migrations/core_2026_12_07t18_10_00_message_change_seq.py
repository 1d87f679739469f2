"""Exports current to seconds: a database-assigned change order on every message.

- ``message.change_seq``: which change wrote this version of the message (set by the
  trigger the next migration installs; 0 for the rows stored before it);
- ``export_watermark.exported_seq``: every change below it has been exported to the series.

Table steps only: Piccolo runs a migration's raw steps before its table steps, so the
trigger and index that use these columns are in the next migration.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import BigInt
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-07T18:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "message.change_seq and export_watermark.exported_seq (exports by change order)"


def _params(*, default: int | None, null: bool) -> dict[str, object]:
    return {
        "default": default,
        "null": null,
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
        table_class_name="Message",
        tablename="message",
        column_name="change_seq",
        db_column_name="change_seq",
        column_class_name="BigInt",
        column_class=BigInt,
        params=_params(default=0, null=False),
        schema=None,
    )

    manager.add_column(
        table_class_name="ExportWatermark",
        tablename="export_watermark",
        column_name="exported_seq",
        db_column_name="exported_seq",
        column_class_name="BigInt",
        column_class=BigInt,
        params=_params(default=None, null=True),
        schema=None,
    )

    return manager
