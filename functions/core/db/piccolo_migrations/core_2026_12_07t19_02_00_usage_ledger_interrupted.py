"""A reply retired as ``interrupted`` is accounted in the usage ledger too.

Every process that retires abandoned replies (the sweep, a send's claim, on either engine,
in SQL or PL/pgSQL) does it with one ``UPDATE`` from ``pending``; a trigger on that change
writes the ledger's row, so no retiring statement needs to know about the ledger, and the
send path's own writes never fire it (its ``WHEN`` is false for them, checked without
running the trigger). Charged to the conversation's owner; no upstream answered. If the
reply's own process finishes it afterwards, its outcome replaces this row (the
recorder's upsert).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T19:02:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Replies retired as interrupted get their usage_ledger row (a trigger)"

_WHEN = "OLD.status = 'pending' AND NEW.error_code = 'interrupted'"
_INSERT = (
    "INSERT INTO usage_ledger (id, owner_key, conversation, llm_config, config_name, "
    "config_version, model, upstream, status, error_code, error_message, prompt_tokens, "
    "completion_tokens, ttft_ms, latency_ms, asked_at, finished_at) "
    "SELECT NEW.id, c.owner_key, NEW.conversation, NEW.llm_config, l.name, l.version, "
    "NEW.model, NULL, NEW.status, NEW.error_code, NEW.error_message, NEW.prompt_tokens, "
    "NEW.completion_tokens, NEW.ttft_ms, NEW.latency_ms, NEW.created_at, "
    "COALESCE(NEW.completed_at, NEW.created_at) "
    "FROM conversation c LEFT JOIN llm_config l ON l.id = NEW.llm_config "
    "WHERE c.id = NEW.conversation ON CONFLICT (id) DO NOTHING"
)
PG_FORWARDS = (
    "CREATE OR REPLACE FUNCTION switchboard_ledger_interrupted() RETURNS trigger "
    f"LANGUAGE plpgsql AS $$ BEGIN {_INSERT}; RETURN NULL; END $$",
    "CREATE TRIGGER message_ledger_interrupted AFTER UPDATE OF status ON message "
    f"FOR EACH ROW WHEN ({_WHEN}) EXECUTE FUNCTION switchboard_ledger_interrupted()",
)
PG_BACKWARDS = (
    "DROP TRIGGER IF EXISTS message_ledger_interrupted ON message",
    "DROP FUNCTION IF EXISTS switchboard_ledger_interrupted()",
)
SQLITE_FORWARDS = (
    "CREATE TRIGGER message_ledger_interrupted AFTER UPDATE OF status ON message "
    f"WHEN {_WHEN} BEGIN {_INSERT}; END",
)
SQLITE_BACKWARDS = ("DROP TRIGGER IF EXISTS message_ledger_interrupted",)


async def _run(postgres: tuple[str, ...], sqlite: tuple[str, ...]) -> None:
    engine = engine_finder()
    assert engine is not None
    for ddl in postgres if engine.engine_type == "postgres" else sqlite:
        await engine.run_ddl(ddl)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def install() -> None:
        await _run(PG_FORWARDS, SQLITE_FORWARDS)

    async def uninstall() -> None:
        await _run(PG_BACKWARDS, SQLITE_BACKWARDS)

    manager.add_raw(install)
    manager.add_raw_backwards(uninstall)
    return manager
