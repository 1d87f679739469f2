"""Database engines: which one a URL names, and which one a query runs on.

Piccolo finds a table's engine in ``Table._meta.db``. Every Switchboard table (and
Piccolo's migration table) holds one :data:`ENGINE`, a thin :class:`RuntimeEngine` that
hands each call to the engine bound to the current context: :func:`using` binds one for a
block (an open runtime does, and the tasks it starts inherit it), and with none bound the
process default set by :func:`use_engine` (tests, one-shot scripts). So two runtimes in
one process (a notebook beside a test, two test databases) each query their own database.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar, Token
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from functions.core.binding import unbind

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from piccolo.table import Table

# Piccolo warns on stderr, in colour, when its first query cannot connect; Switchboard
# reports that itself (one CLI line, a 503, a readiness probe), so the warning is noise.
warnings.filterwarnings(
    "ignore",
    message=".*(Unable to connect to (the )?database|Unable to fetch server version)",
    module="piccolo",
)

# How PostgreSQL connections reach the server: direct or through a pooler that keeps a
# client's server connection for its session ("session"), or one lending it per
# transaction ("transaction", see engine_from_url).
PoolMode = Literal["session", "transaction"]

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


def engine_from_url(url: str, *, pool_mode: PoolMode = "session") -> Engine[Any]:
    """Build (but do not connect, nor create anything for) the engine a database URL names.

    ``pool_mode="transaction"``: ``url`` is a pooler that lends a server connection for
    one transaction (PgBouncer's ``pool_mode = transaction``). asyncpg's statement cache
    is then off: a cached statement is prepared on one server connection and would be
    executed on another ("prepared statement ... does not exist"). Without the cache
    asyncpg sends each statement's Parse with its Bind and Execute in one message batch,
    which a pooler keeps on one server connection; the price is a second round trip per
    statement (the describe), measured in docs/sizing.md. And the client encoding is
    asked for as the server names it: asyncpg asks for ``'utf-8'``, which PgBouncer takes
    for another value than the server's ``UTF8`` and so sets again (``SET
    client_encoding``: one more statement, round trip and commit) every time it lends a
    server connection, that is for every transaction.
    """
    if url.startswith("sqlite:///"):
        return PrivateSQLiteEngine(path=str(sqlite_path(url)), timeout=SQLITE_BUSY_TIMEOUT_S)
    if url.startswith(("postgresql://", "postgres://")):
        config: dict[str, Any] = {"dsn": url}
        if pool_mode == "transaction":
            config["statement_cache_size"] = 0
            config["server_settings"] = {"client_encoding": "UTF8"}
        return PostgresEngine(config=config)
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


# The engine bound to this context (an open runtime's); None: the process default.
_BOUND: ContextVar[Engine[Any] | None] = ContextVar("switchboard_engine", default=None)


class RuntimeEngine(Engine[Any]):
    """The engine every table holds: the one bound to the current context, else the
    process default.

    Each call is handed to the real engine, whose own ``current_transaction`` (a ContextVar)
    decides which connection runs it, so transactions, savepoints and ``atomic`` behave as
    with the engine itself. What it adds per query is one ContextVar read per call Piccolo
    makes (two: the query and its rows' conversion), never anything per row.
    """

    def __init__(self) -> None:
        # Not Engine.__init__: that connects to check the server's version.
        self.default: Engine[Any] | None = None

    def resolve(self) -> Engine[Any]:
        engine = _BOUND.get() or self.default
        if engine is None:
            raise RuntimeError("no database is open: use functions.core.runtime.open_runtime")
        return engine

    @property
    def engine_type(self) -> str:  # type: ignore[override]
        return self.resolve().engine_type

    @property
    def current_transaction(self) -> ContextVar[Any]:  # type: ignore[override]
        return self.resolve().current_transaction

    @property
    def min_version_number(self) -> float:  # type: ignore[override]
        return self.resolve().min_version_number

    async def get_version(self) -> float:
        return await self.resolve().get_version()

    def get_version_sync(self) -> float:
        return self.resolve().get_version_sync()

    async def prep_database(self) -> None:
        await self.resolve().prep_database()  # type: ignore[no-untyped-call]

    async def batch(self, query: Any, batch_size: int = 100, node: str | None = None) -> Any:
        return await self.resolve().batch(query, batch_size=batch_size, node=node)

    async def run_querystring(self, querystring: Any, in_pool: bool = True) -> Any:
        return await (_BOUND.get() or self.resolve()).run_querystring(querystring, in_pool)

    def transform_response_to_dicts(self, results: Any) -> list[dict[str, Any]]:
        return (_BOUND.get() or self.resolve()).transform_response_to_dicts(results)

    async def run_ddl(self, ddl: str, in_pool: bool = True) -> Any:
        return await self.resolve().run_ddl(ddl, in_pool)

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve().transaction(*args, **kwargs)

    def atomic(self) -> Any:
        return self.resolve().atomic()

    def transaction_exists(self) -> bool:
        return self.resolve().transaction_exists()

    async def start_connection_pool(self, **kwargs: Any) -> None:
        await self.resolve().start_connection_pool(**kwargs)  # type: ignore[no-untyped-call]

    async def close_connection_pool(self) -> None:
        await self.resolve().close_connection_pool()  # type: ignore[no-untyped-call]

    def __getattr__(self, name: str) -> Any:
        # The rest (a SQLite engine's path, a PostgreSQL engine's pool): rare, never per query.
        if name.startswith("__"):  # copy, pickle and friends probe for these: not the engine's
            raise AttributeError(name)
        return getattr(self.resolve(), name)


ENGINE = RuntimeEngine()
"""The one engine object Piccolo sees (``_meta.db`` of every table, ``conf.DB``)."""


def _point_tables() -> None:
    """Make Piccolo find :data:`ENGINE` everywhere: tables, its conf, its migrations."""
    from functions.core.db import conf
    from functions.core.db.tables import ALL_TABLES

    os.environ["PICCOLO_CONF"] = conf.__name__
    tables: tuple[type[Table], ...] = (*ALL_TABLES, Migration)
    for table in tables:
        if table._meta._db is not ENGINE:
            table._meta.db = ENGINE


def use_engine(engine: Engine[Any] | None) -> None:
    """Make ``engine`` the process default: what runs where no engine is bound uses it."""
    _point_tables()
    ENGINE.default = engine


def bind_engine(engine: Engine[Any]) -> Token[Engine[Any] | None]:
    """Bind ``engine`` to the current context (and the tasks it starts) until
    :func:`unbind_engine`; prefer :func:`using` outside hot paths."""
    return _BOUND.set(engine)


def unbind_engine(token: Token[Engine[Any] | None]) -> None:
    unbind(_BOUND, token, None)


@contextmanager
def using(engine: Engine[Any]) -> Iterator[Engine[Any]]:
    """Run the block (and the tasks it starts) on ``engine``, whatever the process default."""
    _point_tables()
    token = bind_engine(engine)
    try:
        yield engine
    finally:
        unbind_engine(token)


@contextmanager
def default_while_open(engine: Engine[Any]) -> Iterator[None]:
    """Make ``engine`` the process default for the block if there is none yet.

    A safety net for code that runs outside every bound context (a thread some library
    started): in a process with one runtime it finds that runtime's engine. It never
    replaces a default, so a second runtime cannot re-point the first's.
    """
    adopted = ENGINE.default is None
    if adopted:
        use_engine(engine)
    try:
        yield
    finally:
        if adopted and ENGINE.default is engine:
            ENGINE.default = None


def current_engine() -> Engine[Any]:
    """The real engine this context runs on (bound, else the process default)."""
    return _BOUND.get() or ENGINE.resolve()


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
