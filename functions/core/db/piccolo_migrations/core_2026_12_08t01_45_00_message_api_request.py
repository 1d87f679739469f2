"""``message.api_request``: what an API shows back about the request that asked for a reply.

OpenAI's stateful APIs return a request's parameters with its result: a Responses object
carries its ``instructions``, ``tools``, ``metadata``, sampling and ``previous_response_id``.
They belong to the reply they produced, so they live on its row (JSON, NULL for replies
no such API asked for), not in a second table of copies. Table steps only.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import JSONB
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-08T01:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "message.api_request: the request parameters an API shows back with a reply"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    manager.add_column(
        table_class_name="Message",
        tablename="message",
        column_name="api_request",
        db_column_name="api_request",
        column_class_name="JSONB",
        column_class=JSONB,
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
