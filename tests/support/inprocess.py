"""The gateway app in this process, on the test's own event loop: ASGI in, no socket.

For breadth: many fast API tests without a server process. The app is the one
``functions.gateway.create_app`` builds; its lifespan (the runtime: database pool, LLM
client, services) runs here, and requests go through ``httpx.ASGITransport`` with the
caller's context, so everything happens on this loop (Litestar's ``AsyncTestClient`` runs
the app on another loop and breaks pooled connections). Crashes, signals, disconnects and
several workers stay with the real-process tests (``tests/support/gateway.py``).

    async with inprocess_gateway(settings) as gateway:
        response = await gateway.admin.post("/v1/configs", json={...})
        bob = await gateway.caller("bob")  # bob.http, bob.key_id

The lifespan opens its own runtime on ``settings.database_url``, and the block runs on it
too (``Runtime.bind``): the app works on committed data with connections of its own (use a
database cleaned by truncation, not the rolled-back ``db`` transaction), and the test's
service calls reach the same database. Nothing outside the block changes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.settings import Settings
from functions.gateway import create_app

if TYPE_CHECKING:
    from litestar import Litestar

    from functions.core.llm.client import LLMClient
    from functions.core.runtime import Runtime

BASE_URL = "http://gateway"


def inprocess_settings(database_url: str, llm_urls: Sequence[str], **overrides: Any) -> Settings:
    """Settings for an in-process gateway: small timeouts, no key cache, quiet logs."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "database_pool_max": 5,
        "llm_urls": tuple(llm_urls),
        "llm_connect_timeout_s": 1.0,
        "llm_first_token_timeout_s": 5.0,
        "llm_token_timeout_s": 5.0,
        "llm_total_timeout_s": 10.0,
        "send_lock_timeout_s": 5.0,
        # A process-wide cache would outlive the app; every request checks the database.
        "auth_cache_ttl_s": 0.0,
        "log_format": "json",
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass(frozen=True)
class Caller:
    """One API key and a client authenticated with it."""

    key_id: uuid.UUID
    http: httpx.AsyncClient


@dataclass
class InProcessGateway:
    """A running in-process gateway and HTTP clients for it."""

    app: Litestar
    admin: httpx.AsyncClient
    """Authenticated with a key holding the ``admin`` and ``chat`` scopes."""
    _stack: AsyncExitStack = field(repr=False)

    @property
    def runtime(self) -> Runtime:
        """The open runtime (services, LLM client, engine) the app's handlers use."""
        runtime: Runtime = self.app.state.runtime
        return runtime

    def client(self, secret: str | None) -> httpx.AsyncClient:
        """A client sending ``secret`` as its bearer key (None: no key), closed on exit."""
        client = asgi_client(self.app, secret)
        self._stack.push_async_callback(client.aclose)
        return client

    async def caller(self, name: str, scopes: Sequence[str] = ("chat",)) -> Caller:
        """A new API key made through the API (by the admin), and a client using it."""
        response = await self.admin.post("/v1/keys", json={"name": name, "scopes": list(scopes)})
        response.raise_for_status()
        created = response.json()
        return Caller(key_id=uuid.UUID(created["id"]), http=self.client(created["secret"]))


def asgi_client(app: Litestar, secret: str | None) -> httpx.AsyncClient:
    """An HTTP client calling ``app`` directly (no socket), with ``secret`` as its key."""
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    # Litestar's precise ASGI types against httpx's plain ones: the same protocol.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)


class _Lifespan:
    """Drives the app's ASGI lifespan as a server does: in a task of its own.

    Startup and shutdown must run in one task (the app's lifespan holds anyio cancel
    scopes), and a test fixture's setup and teardown may run in different ones.
    """

    def __init__(self, app: Litestar) -> None:
        self._app = app
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        await self._outbox.put(message)

    async def _expect(self, wanted: str) -> None:
        assert self._task is not None
        answer = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait({answer, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self._task.result()  # the lifespan's own exception, if it raised one
            raise RuntimeError(f"the app's lifespan ended without {wanted}")
        message = answer.result()
        if message["type"] != wanted:
            raise RuntimeError(f"{message['type']}: {message.get('message', '')}")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self._task = asyncio.create_task(
            self._app(scope, self._receive, self._send),  # type: ignore[arg-type]
            name="inprocess-lifespan",
        )
        await self._inbox.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")

    async def shutdown(self) -> None:
        assert self._task is not None
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        await self._task


@asynccontextmanager
async def inprocess_gateway(
    settings: Settings, *, llm: LLMClient | None = None
) -> AsyncIterator[InProcessGateway]:
    """Build the gateway app, run its lifespan here, and yield clients for it.

    ``llm`` is shared with the app (the caller closes it), as ``create_app`` allows;
    without it the lifespan builds one from ``settings`` and closes it.
    """
    app = create_app(settings, llm=llm)
    lifespan = _Lifespan(app)
    await lifespan.startup()
    unbind = app.state.runtime.bind()
    try:
        async with AsyncExitStack() as stack:
            # The first admin key cannot come through the API: made as the CLI makes it.
            admin = await keys.create_key(ApiKeyCreate(name="admin", scopes=["admin", "chat"]))
            client = asgi_client(app, admin.secret)
            stack.push_async_callback(client.aclose)
            yield InProcessGateway(app=app, admin=client, _stack=stack)
    finally:
        unbind()
        await lifespan.shutdown()
