"""Indexes for evaluations that Piccolo cannot declare: a composite unique one, an ordered one.

Raw SQL that PostgreSQL and SQLite both run (a migration of its own: Piccolo runs a
migration's raw steps before its table steps).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from functions.core.db.raw_indexes import add_index_steps

ID = "2026-11-29T23:11:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "One result per run, item and configuration; runs newest first"

INDEXES = {
    # A resumed run sends only what has no row here; a result is never recorded twice.
    "eval_result_run_item_config_key": (
        "CREATE UNIQUE INDEX eval_result_run_item_config_key "
        "ON eval_result (run, item_id, llm_config)"
    ),
    # ``switchboard evals list``: newest first, keyset-paginated.
    "eval_run_created_idx": "CREATE INDEX eval_run_created_idx ON eval_run (created_at, id)",
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    return add_index_steps(manager, INDEXES)
