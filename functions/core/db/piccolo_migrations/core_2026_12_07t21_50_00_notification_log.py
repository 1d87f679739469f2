"""SQLite's notifications: ``notification_log``, the rows every serving process polls.

PostgreSQL has ``NOTIFY``; SQLite has nothing like it, so there a notification is a row
written in the notifying transaction (delivered at its commit, never on rollback, as
``NOTIFY`` is) and each serving process reads the rows after the last one it saw
(``functions.core.db.notifications.PollingListener``). ``AUTOINCREMENT``: an id is never
reused, even once every row is pruned, so a reader's position stays valid. Nothing on
PostgreSQL.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T21:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "SQLite's notification log (PostgreSQL uses NOTIFY)"

SQLITE_FORWARDS = (
    "CREATE TABLE notification_log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "channel TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL)",
)
SQLITE_BACKWARDS = ("DROP TABLE IF EXISTS notification_log",)


async def _run(sqlite: tuple[str, ...]) -> None:
    engine = engine_finder()
    assert engine is not None
    if engine.engine_type == "sqlite":
        for ddl in sqlite:
            await engine.run_ddl(ddl)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def install() -> None:
        await _run(SQLITE_FORWARDS)

    async def uninstall() -> None:
        await _run(SQLITE_BACKWARDS)

    manager.add_raw(install)
    manager.add_raw_backwards(uninstall)
    return manager
