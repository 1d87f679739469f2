"""The owner's bound on a pending reply: ``message.stale_after``.

How long a reply may legitimately stay pending depends on the timeouts of the process that
generates it (``liveness.pending_bound``); a sweeper or a sender with shorter timeouts must
not judge it by its own. The claim stores the owner's bound with the reply (``created_at``
plus the owner's ``pending_bound``), and every sweep and claim reads it from there. NULL
for replies stored before (and by ``switchboard_claim_v1``): those are judged as before.

Table steps only: the claim function that writes it is in the next migration.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-07T18:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "message.stale_after: a pending reply's bound, its owner's"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    manager.add_column(
        table_class_name="Message",
        tablename="message",
        column_name="stale_after",
        db_column_name="stale_after",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
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
