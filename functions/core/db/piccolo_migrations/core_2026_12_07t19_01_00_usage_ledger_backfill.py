"""The usage ledger's indexes, and its rows for the replies stored before it existed.

Raw SQL both engines run (a migration of its own: Piccolo runs a migration's raw steps
before its table steps, and the table is made by the previous one). The backfill takes
every finished reply the gateway generated (an assistant message naming a model; a turn a
client sent has none), charged to its conversation's owner; which upstream answered was
never stored, so it stays NULL. Written so running it again adds nothing.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

from functions.core.db.raw_indexes import add_index_steps

ID = "2026-12-07T19:01:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "usage_ledger's indexes; its rows for the replies already stored"

INDEXES = {
    # The usage report: a window of exchanges by when they were asked.
    "usage_ledger_asked_idx": "CREATE INDEX usage_ledger_asked_idx ON usage_ledger (asked_at)",
    # One key's usage (its report, its quota) over a window.
    "usage_ledger_owner_asked_idx": (
        "CREATE INDEX usage_ledger_owner_asked_idx ON usage_ledger (owner_key, asked_at)"
    ),
}

BACKFILL = (
    "INSERT INTO usage_ledger (id, owner_key, conversation, llm_config, config_name, "
    "config_version, model, upstream, status, error_code, error_message, prompt_tokens, "
    "completion_tokens, ttft_ms, latency_ms, asked_at, finished_at) "
    "SELECT m.id, c.owner_key, m.conversation, m.llm_config, l.name, l.version, m.model, "
    "NULL, m.status, m.error_code, m.error_message, m.prompt_tokens, m.completion_tokens, "
    "m.ttft_ms, m.latency_ms, m.created_at, COALESCE(m.completed_at, m.created_at) "
    "FROM message m JOIN conversation c ON c.id = m.conversation "
    "LEFT JOIN llm_config l ON l.id = m.llm_config "
    "WHERE m.role = 'assistant' AND m.model IS NOT NULL AND m.status <> 'pending' "
    "ON CONFLICT (id) DO NOTHING"
)


async def backfill() -> None:
    engine = engine_finder()
    assert engine is not None
    await engine.run_ddl(BACKFILL)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)
    add_index_steps(manager, INDEXES)
    manager.add_raw(backfill)
    return manager
