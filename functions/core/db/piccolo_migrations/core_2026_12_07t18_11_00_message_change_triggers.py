"""Every write of a message stamps ``message.change_seq`` with the database's change order.

- PostgreSQL: a BEFORE INSERT OR UPDATE trigger sets it to the writing transaction's id
  (``pg_current_xact_id()``, 64 bits, never wraps). An export takes the stamps below the
  oldest transaction still running (``pg_snapshot_xmin``): every writer below it has ended,
  so no row can appear there later (``functions.core.exports.source``).
- SQLite: writers are serialised, so a counter bumped inside the writing transaction is
  commit order: AFTER triggers bump ``message_change_counter`` and stamp the row (SQLite
  triggers cannot assign ``NEW``). The counter never goes back, even when rows are deleted.

A trigger, not the statements that write messages: every writer (the claim, the recorder,
the sweep, any later one) is covered without knowing about exports. The export's index
moves from ``(completed_at, id)`` to ``(change_seq, id)`` of finished messages, so a send
still maintains one index for exports (a pending reply is not in it until it finishes).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T18:11:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Triggers stamping message.change_seq; exports walk (change_seq, id)"

PG_FORWARDS = (
    "CREATE OR REPLACE FUNCTION switchboard_message_change_seq() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "NEW.change_seq := pg_current_xact_id()::text::bigint; RETURN NEW; END $$",
    "CREATE TRIGGER message_change_seq BEFORE INSERT OR UPDATE ON message "
    "FOR EACH ROW EXECUTE FUNCTION switchboard_message_change_seq()",
)
PG_BACKWARDS = (
    "DROP TRIGGER IF EXISTS message_change_seq ON message",
    "DROP FUNCTION IF EXISTS switchboard_message_change_seq()",
)
_SQLITE_STAMP = (
    "BEGIN UPDATE message_change_counter SET value = value + 1 WHERE id = 1; "
    "UPDATE message SET change_seq = (SELECT value FROM message_change_counter WHERE id = 1) "
    "WHERE id = NEW.id; END"
)
SQLITE_FORWARDS = (
    "CREATE TABLE message_change_counter "
    "(id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
    "INSERT INTO message_change_counter (id, value) VALUES (1, 0)",
    f"CREATE TRIGGER message_change_seq_insert AFTER INSERT ON message {_SQLITE_STAMP}",
    # The guard: the trigger's own update of the row is not another change.
    "CREATE TRIGGER message_change_seq_update AFTER UPDATE ON message "
    f"WHEN NEW.change_seq IS OLD.change_seq {_SQLITE_STAMP}",
)
SQLITE_BACKWARDS = (
    "DROP TRIGGER IF EXISTS message_change_seq_update",
    "DROP TRIGGER IF EXISTS message_change_seq_insert",
    "DROP TABLE IF EXISTS message_change_counter",
)
# Pending replies (completed_at NULL) are not in the scan; they join it once finished.
INDEX_FORWARDS = (
    "CREATE INDEX message_change_seq_idx ON message (change_seq, id) "
    "WHERE completed_at IS NOT NULL",
    "DROP INDEX IF EXISTS message_completed_id_idx",
)
INDEX_BACKWARDS = (
    "CREATE INDEX message_completed_id_idx ON message (completed_at, id)",
    "DROP INDEX IF EXISTS message_change_seq_idx",
)


async def _run(postgres: tuple[str, ...], sqlite: tuple[str, ...], both: tuple[str, ...]) -> None:
    engine = engine_finder()
    assert engine is not None
    for ddl in (*(postgres if engine.engine_type == "postgres" else sqlite), *both):
        await engine.run_ddl(ddl)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def install() -> None:
        await _run(PG_FORWARDS, SQLITE_FORWARDS, INDEX_FORWARDS)

    async def uninstall() -> None:
        await _run(PG_BACKWARDS, SQLITE_BACKWARDS, INDEX_BACKWARDS)

    manager.add_raw(install)
    manager.add_raw_backwards(uninstall)
    return manager
