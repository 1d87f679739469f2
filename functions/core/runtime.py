"""The one way any Switchboard process starts: settings, database, LLM client, services.

The web apps' lifespan, the CLI, the quick start, flows and notebooks all open what they
need with :func:`open_runtime` and get the same services (litestar-fullstack's
``provide_services`` idea: jobs get what handlers get)::

    async with open_runtime(load_settings()) as rt:
        reply = await rt.chat.send(SendRequest(...))

A serving process (``serving=True``) also keeps going while the database is down (the pool
opens once it is back), caches authenticated keys while it can hear revocations, and
listens for notifications; a one-shot command fails fast instead.

Everything a runtime opens is its own: the engine (bound to the block it opens and the
tasks started in it; a web app binds each request, see :meth:`Runtime.bind`), the key
cache, the outcome backlog, the sends in flight. Two runtimes in one process (a notebook
beside a test, two test databases) never see each other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.journal import OutcomeJournal
from functions.core.chat.recorder import OutcomeBacklog
from functions.core.chat.service import ChatService
from functions.core.db.engine import (
    bind_engine,
    close_pool,
    default_while_open,
    describe_url,
    engine_from_url,
    open_pool,
    unbind_engine,
    using,
)
from functions.core.db.errors import as_database_error
from functions.core.db.notifications import DeafListener, PostgresListener
from functions.core.db.port import port_for
from functions.core.health.watcher import HealthWatcher
from functions.core.keys.cache import PrincipalCache, bind_principals, unbind_principals
from functions.core.keys.revocations import marker_path, revocations_for
from functions.core.limits.limiter import Limiter
from functions.core.liveness.inflight import InFlight
from functions.core.liveness.service import (
    Lease,
    Sweeper,
    expire_dead_neighbours,
    pending_bound,
)
from functions.core.llm.client import LLMClient
from functions.core.logging import configure_logging, get_logger
from functions.core.metrics import (
    CallbackCollector,
    add_live_collector,
    remove_live_collector,
    upstream_metrics,
)
from functions.core.settings import env_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from piccolo.engine.base import Engine

    from functions.core.db.notifications import Listener
    from functions.core.settings import Settings

log = get_logger(__name__)
POOL_RETRY_S = 5.0
BACKLOG_FLUSH_S = 5.0


class Runtime:
    """What an open runtime holds. Services take these; nothing here is global state."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine[Any],
        llm: LLMClient | None,
        notifications: Listener | None,
        health: HealthWatcher | None = None,
        *,
        lease: Lease | None = None,
        in_flight: InFlight | None = None,
        backlog: OutcomeBacklog | None = None,
        principals: PrincipalCache | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        # Keys that just authenticated (off unless a serving runtime turns it on).
        self.principals = principals or PrincipalCache(marker=marker_path(engine))
        self.llm = llm
        self.notifications = notifications
        # Serving processes with an LLM client: recorded health verdicts steer it.
        self.health = health
        # The first half of every send (ownership, configuration, claim, prompt).
        self.exchanges = Exchanges(
            busy_timeout_s=settings.send_lock_timeout_s,
            lease=lease,
            pending_bound=pending_bound(settings),
            idempotency_window=timedelta(seconds=settings.idempotency_window_s),
            history_cap=settings.history_max_messages,
        )
        self.in_flight = in_flight or InFlight(grace_s=settings.shutdown_grace_s)
        # Outcomes the database did not take in time; journaled when the runtime is open.
        self.backlog = backlog or OutcomeBacklog(retry_s=settings.outcome_retry_s)
        # Reserves before every exchange, reconciles after (in memory unless opened with
        # SWITCHBOARD_RATE_LIMIT_URL; functions/core/limits).
        self.limiter = limiter or Limiter(settings, llm=llm)
        self._chat = (
            ChatService(
                llm,
                self.exchanges,
                in_flight=self.in_flight,
                backlog=self.backlog,
                hooks=self.limiter,
            )
            if llm is not None
            else None
        )

    @property
    def chat(self) -> ChatService:
        """The send path (store, call the model, record); needs the LLM client."""
        if self._chat is None:
            raise RuntimeError("this runtime was opened without an LLM client")
        return self._chat

    def bind(self) -> Callable[[], None]:
        """Run the current context (and the tasks it starts) on this runtime's engine and key
        cache until the returned function is called.

        :func:`open_runtime` binds the block it opens; a web app binds each request, as
        the server starts requests in tasks of its own.
        """
        engine = bind_engine(self.engine)
        principals = bind_principals(self.principals)

        def unbind() -> None:
            unbind_principals(principals)
            unbind_engine(engine)

        return unbind

    def require_llm(self) -> LLMClient:
        if self.llm is None:
            raise RuntimeError("this runtime was opened without an LLM client")
        return self.llm


@asynccontextmanager
async def open_runtime(  # noqa: PLR0915 - one block that opens, in order, all a process holds
    settings: Settings,
    *,
    llm: LLMClient | None = None,
    use_llm: bool = True,
    serving: bool = False,
    configure_logs: bool = True,
) -> AsyncIterator[Runtime]:
    """Open the database (and its pool), the LLM client and the services; close them after.

    ``llm`` shares a client the caller owns (tests, several apps in one process); otherwise
    one is built from the settings when ``use_llm``. ``serving`` is for long-running
    processes (see the module docstring).
    """
    if configure_logs:
        configure_logging(settings.resolved_log_format, settings.log_level)
    engine = engine_from_url(settings.database_url, pool_mode=settings.database_pool_mode)
    principals = PrincipalCache(marker=marker_path(engine))
    async with contextlib.AsyncExitStack() as stack:
        # Bound before anything starts a task, so every task started here inherits it.
        stack.enter_context(using(engine))
        stack.callback(unbind_principals, bind_principals(principals))
        # Where nothing is bound (a thread some library started), the first runtime open.
        stack.enter_context(default_while_open(engine))
        stack.push_async_callback(close_pool, engine)
        if serving:
            await _open_pool_or_retry(engine, settings, stack)
        else:
            await open_pool(
                engine, min_size=settings.database_pool_min, max_size=settings.database_pool_max
            )
        notifications = _listen(engine, settings, principals) if serving else None
        client = llm
        if client is None and use_llm:
            client = LLMClient.from_settings(settings)
            stack.push_async_callback(client.aclose)
        health = HealthWatcher(client) if serving and client is not None else None
        in_flight = InFlight(grace_s=settings.shutdown_grace_s)
        limiter = _open_limiter(settings, stack, client)
        if notifications is not None:
            if health is not None:
                notifications.subscribe(health.subscription())
            notifications.subscribe(in_flight.deletions())
            notifications.start()
            stack.push_async_callback(notifications.stop)
        if client is not None:
            live = client
            collector = CallbackCollector(lambda: upstream_metrics(live.stats()))
            add_live_collector(collector)
            stack.callback(remove_live_collector, collector)
        if health is not None:
            health.start()
            stack.push_async_callback(health.stop)
            health_collector = CallbackCollector(health.collect)
            add_live_collector(health_collector)
            stack.callback(remove_live_collector, health_collector)
        lease = await _hold_lease(settings, stack, serving=serving) if client else None
        backlog = OutcomeBacklog(
            retry_s=settings.outcome_retry_s,
            journal=OutcomeJournal.for_settings(
                settings, lease.instance_id if lease is not None else uuid.uuid4()
            ),
        )
        # Closed after the sends in flight (pushed below, so run first) and before the
        # lease and the pool: what is left is in the journal for the next start.
        stack.push_async_callback(backlog.close, BACKLOG_FLUSH_S)
        if serving:
            # Outcomes the journals of stopped processes still hold, as soon as the
            # database takes them.
            backlog.start_replay()
            sweeper = Sweeper(settings, lease)
            sweeper.start()
            stack.push_async_callback(sweeper.stop)
        if serving:
            stack.callback(in_flight.drain_on_signals())
            # Closed first: in-flight sends record their replies before anything goes.
            stack.push_async_callback(
                in_flight.wait_idle, settings.shutdown_grace_s + settings.outcome_retry_s
            )
        yield Runtime(
            settings,
            engine,
            client,
            notifications,
            health,
            lease=lease,
            in_flight=in_flight,
            backlog=backlog,
            principals=principals,
            limiter=limiter,
        )


def _open_limiter(
    settings: Settings, stack: contextlib.AsyncExitStack, llm: LLMClient | None
) -> Limiter:
    """The limits of this runtime (their Redis connection closed with it); ``llm`` counts
    prompts when ``SWITCHBOARD_LIMIT_PROMPT_TOKENS=tokenize``."""
    limiter = Limiter.from_settings(settings, llm)
    stack.push_async_callback(limiter.close)
    return limiter


async def _hold_lease(
    settings: Settings, stack: contextlib.AsyncExitStack, *, serving: bool
) -> Lease:
    """This process's lease, renewed in the background; released on a clean close."""
    lease = Lease(ttl_s=settings.lease_ttl_s)
    if serving:
        try:
            # A restart after a crash: the dead process's replies are retired at once.
            await expire_dead_neighbours(lease)
        except Exception as exc:
            if as_database_error(exc) is None:
                raise
    lease.start()
    stack.push_async_callback(lease.stop, release=True)
    return lease


def _listen(engine: Engine[Any], settings: Settings, principals: PrincipalCache) -> Listener:
    """This database's listener (the engine port's). Authenticated keys are cached while
    revocations can be seen: with a revocation marker (SQLite), which every use of the
    cache reads, always; otherwise while the listener hears them."""
    if settings.auth_cache_ttl_s <= 0:
        principals.disable()
    elif principals.marker is not None:
        principals.enable(settings.auth_cache_ttl_s)
    listener = _listener(engine, settings)
    if settings.auth_cache_ttl_s > 0 and principals.marker is None:
        listener.subscribe(revocations_for(principals, settings.auth_cache_ttl_s))
    return listener


def _listener(engine: Engine[Any], settings: Settings) -> Listener:
    """Where this process hears notifications: the direct URL when one is given; none
    behind a pooler in transaction mode without one (the session a ``LISTEN`` needs is
    not kept there); otherwise the engine port's listener on the database itself."""
    if settings.database_listen_url is not None:
        return PostgresListener(settings.database_listen_url)
    if settings.database_pool_mode == "transaction":
        return DeafListener(
            f"{env_name('database_pool_mode')}=transaction and no "
            f"{env_name('database_listen_url')}: health is read every few seconds, keys "
            "are checked on every request, deletions are not heard from other processes"
        )
    return port_for(engine).listener()


async def _open_pool_or_retry(
    engine: Engine[Any], settings: Settings, stack: contextlib.AsyncExitStack
) -> None:
    """Open the pool; if the database is down, start anyway and keep trying.

    Probes report the outage and requests get 503 meanwhile (each query tries a connection
    of its own); the pool opens once the database is back.
    """
    if await _try_open_pool(engine, settings):
        return
    retry = asyncio.create_task(_keep_opening_pool(engine, settings), name="switchboard-pool")
    stack.callback(retry.cancel)


async def _try_open_pool(engine: Engine[Any], settings: Settings) -> bool:
    try:
        await open_pool(
            engine, min_size=settings.database_pool_min, max_size=settings.database_pool_max
        )
    except Exception as exc:
        if as_database_error(exc) is None:
            raise
        log.error("database.unavailable", url=describe_url(settings.database_url), error=str(exc))
        return False
    return True


async def _keep_opening_pool(engine: Engine[Any], settings: Settings) -> None:
    while True:
        await asyncio.sleep(POOL_RETRY_S)
        if await _try_open_pool(engine, settings):
            log.info("database.pool_opened", url=describe_url(settings.database_url))
            return
