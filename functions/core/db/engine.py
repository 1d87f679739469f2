"""Database engines: which one a URL names, and binding it to every table.

Piccolo finds its engine through ``piccolo_conf``; Switchboard's conf
(``functions.core.db.conf``) builds it from the settings. :func:`use_engine` swaps the
engine at run time (tests run the same services on PostgreSQL and SQLite in one process),
which means re-pointing the conf module and every table that cached the old one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from piccolo.apps.migrations.tables import Migration
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from piccolo.engine.base import Engine
    from piccolo.table import Table

# Piccolo warns on stderr, in colour, when its first query cannot connect; Switchboard
# reports that itself (one CLI line, a 503, a readiness probe), so the warning is noise.
warnings.filterwarnings(
    "ignore",
    message=".*(Unable to connect to (the )?database|Unable to fetch server version)",
    module="piccolo",
)

# SQLite: wait for a writer instead of failing at once with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path`` is relative to the working directory; ``sqlite:////abs`` is not."""
    return Path(url.removeprefix("sqlite:///"))


class PrivateSQLiteEngine(SQLiteEngine):
    """A SQLite engine whose connections never create the database file.

    ``sqlite3.connect`` creates a missing file, readable by everyone under the usual umask,
    on the first query of any process (a ``keys list``, a probe). Here every connection
    opens the file read-write only (``mode=rw``): a missing database is an error, and
    :func:`create_sqlite_file` is the one thing that creates one, private to its user.
    ``path`` stays the file's path, resolved when the engine is built.
    """

    def __init__(self, path: str, **connection_kwargs: Any) -> None:
        super().__init__(path=path, **connection_kwargs)
        self._file = str(Path(path).resolve())
        self.connection_kwargs["database"] = f"{Path(self._file).as_uri()}?mode=rw"
        self.connection_kwargs["uri"] = True

    @property
    def path(self) -> str:
        return self._file

    @path.setter
    def path(self, value: str) -> None:
        raise AttributeError("a PrivateSQLiteEngine's file is fixed when it is built")


def engine_from_url(url: str) -> Engine[Any]:
    """Build (but do not connect, nor create anything for) the engine a database URL names."""
    if url.startswith("sqlite:///"):
        return PrivateSQLiteEngine(path=str(sqlite_path(url)), timeout=SQLITE_BUSY_TIMEOUT_S)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(config={"dsn": url})
    raise ValueError(f"unsupported database URL scheme: {urlsplit(url).scheme or url!r}")


def create_sqlite_file(engine: Engine[Any]) -> list[Path]:
    """Create a SQLite database file (and its folders) readable by this user only.

    Only commands that mean to create a database call this (migrating, the quick start);
    every other connection refuses a missing file (:class:`PrivateSQLiteEngine`). Returns
    what it created, folders first, so the caller can say where the database went.
    """
    if not isinstance(engine, SQLiteEngine):
        return []
    path = Path(engine.path).absolute()
    created = [folder for folder in reversed(path.parents) if not folder.exists()]
    for folder in created:
        # One level at a time: ``mkdir(parents=True)`` ignores the mode for the parents.
        folder.mkdir(mode=0o700, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process won the race: theirs
            path.touch(mode=0o600, exist_ok=False)
            created.append(path)
    return created


def sqlite_file_missing(url: str) -> Path | None:
    """The absolute path of the SQLite file ``url`` names when it does not exist, else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = sqlite_path(url).absolute()
    return None if path.exists() else path


def readable_by_others(url: str) -> Path | None:
    """The SQLite file ``url`` names when other local users may read it (made by an older
    release, or by hand), else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = sqlite_path(url).absolute()
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return path if mode & (stat.S_IRWXG | stat.S_IRWXO) else None


def describe_url(url: str) -> str:
    """The URL without its password, for logs and CLI output; a relative SQLite path also
    says where it resolves (it depends on the working directory)."""
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        return url if path.is_absolute() else f"{url} (= {path.absolute()})"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def use_engine(engine: Engine[Any]) -> None:
    """Point Piccolo's engine finder and every Switchboard table at ``engine``."""
    from functions.core.db import conf
    from functions.core.db.tables import ALL_TABLES

    conf.DB = engine
    os.environ["PICCOLO_CONF"] = conf.__name__
    tables: tuple[type[Table], ...] = (*ALL_TABLES, Migration)
    for table in tables:
        table._meta.db = engine


def current_engine() -> Engine[Any]:
    from functions.core.db import conf

    if conf.DB is None:
        raise RuntimeError("no database is open: use functions.core.runtime.open_runtime")
    return conf.DB


async def _keep_session(_connection: object) -> None:
    """Pool reset hook: nothing to undo, as Switchboard never changes session state.

    asyncpg's default reset sends ``RESET ALL; UNLISTEN *; ...`` every time a connection
    goes back to the pool: one extra round trip per query. An open transaction is still
    rolled back by asyncpg before this hook runs.
    """


async def open_pool(engine: Engine[Any], *, min_size: int = 1, max_size: int = 20) -> None:
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(
            min_size=min_size, max_size=max_size, reset=_keep_session
        )


async def close_pool(engine: Engine[Any]) -> None:
    if isinstance(engine, PostgresEngine) and engine.pool is not None:
        await engine.close_connection_pool()


def write_transaction(engine: Engine[Any] | None = None) -> Any:
    """A transaction that takes SQLite's write lock up front.

    SQLite's default deferred transactions upgrade to a write lock on the first write and
    fail with "database is locked" when two connections race to upgrade; ``IMMEDIATE``
    queues them instead. PostgreSQL uses row locks, so a plain transaction is right there.
    """
    engine = engine or current_engine()
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return engine.transaction()


@asynccontextmanager
async def atomic(engine: Engine[Any] | None = None) -> AsyncIterator[None]:
    """All or nothing: a write transaction, or a savepoint inside the caller's transaction.

    A plain nested ``transaction()`` joins the outer one, so a failure inside it would
    leave its earlier statements in place until the outer transaction ends.
    """
    engine = engine or current_engine()
    outer = engine.current_transaction.get()
    if outer is None:
        async with write_transaction(engine):
            yield
        return
    savepoint = await outer.savepoint()
    try:
        yield
    except BaseException:
        await savepoint.rollback_to()
        raise
    await savepoint.release()
