"""The simulator as one raw ASGI app: ``create_app(options)``.

Routing is a dict lookup on the exact path; auth mirrors vLLM's middleware (only ``/v1*``,
any of several keys, constant-time compare, ``OPTIONS`` passes), and guards the
simulator's own ``/sim/*`` controls with the same keys. Unknown paths and methods get
FastAPI's default bodies, because that is what a client of real vLLM sees.
"""

from __future__ import annotations

import hmac
import logging
from typing import NamedTuple

from functions.simulator.asgi import Handler, Receive, Scope, Send, header, send_bytes
from functions.simulator.chat_endpoint import ChatCompletions
from functions.simulator.control import Control
from functions.simulator.embeddings import Embeddings
from functions.simulator.endpoints import Endpoints
from functions.simulator.errors import METHOD_NOT_ALLOWED, NOT_FOUND, UNAUTHORIZED
from functions.simulator.generation import SimulatedConnectionDrop
from functions.simulator.options import SimulatorOptions
from functions.simulator.state import SimulatorState
from functions.simulator.text_completion_endpoint import TextCompletions

SIM_PREFIX = "/sim/"


class Route(NamedTuple):
    methods: frozenset[str]
    handler: Handler
    allow: bytes
    """The ``Allow`` header of a 405."""


def _route(handler: Handler, *methods: str) -> Route:
    return Route(frozenset(methods), handler, ", ".join(methods).encode())


class _HideSimulatedDrops(logging.Filter):
    """uvicorn logs every exception escaping the app; a ``drop`` fault is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info
        return not (exc and isinstance(exc[1], SimulatedConnectionDrop))


_DROP_FILTER = _HideSimulatedDrops()


class SimulatorApp:
    """ASGI 3 callable; its state is public so in-process tests can look inside."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.state = SimulatorState(options)
        endpoints = Endpoints(self.state)
        control = Control(self.state)
        self._keys = tuple(key.encode() for key in options.api_keys)
        # vLLM registers the routes of the model's tasks only: a path another kind of model
        # serves is a plain 404 here, as there.
        served: dict[str, Route] = (
            {"/v1/embeddings": _route(Embeddings(self.state), "POST")}
            if options.runner == "pooling"
            else {
                "/v1/chat/completions": _route(ChatCompletions(self.state), "POST"),
                "/v1/completions": _route(TextCompletions(self.state), "POST"),
            }
        )
        self._routes: dict[str, Route] = {
            **served,
            "/health": _route(endpoints.health, "GET"),
            "/ping": _route(endpoints.health, "GET", "POST"),
            "/version": _route(endpoints.version, "GET"),
            "/load": _route(endpoints.load, "GET"),
            "/v1/models": _route(endpoints.models, "GET"),
            "/tokenize": _route(endpoints.tokenize, "POST"),
            "/detokenize": _route(endpoints.detokenize, "POST"),
            "/metrics": _route(endpoints.metrics, "GET"),
            "/sim/stats": _route(control.stats, "GET"),
            "/sim/health": _route(control.health, "POST"),
            "/sim/reset": _route(control.reset, "POST"),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(SIM_PREFIX):
            # Not vLLM's: they may reset, kill or inspect the server, so the keys guard them.
            if self._keys and not self._authorized(scope):
                await send_bytes(send, 401, UNAUTHORIZED)
                return
            await self._dispatch(path, scope, receive, send)
            return
        counts = self.state.counts
        counts.total += 1
        counts.count_path(path)
        counts.in_flight += 1
        try:
            if self._keys and path.startswith("/v1") and not self._authorized(scope):
                await send_bytes(send, 401, UNAUTHORIZED)
                return
            await self._dispatch(path, scope, receive, send)
        finally:
            # ``reset`` may have swapped the counters meanwhile; it carries in_flight over.
            self.state.counts.in_flight -= 1

    async def _dispatch(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(path)
        if route is None:
            await send_bytes(send, 404, NOT_FOUND)
        elif scope["method"] in route.methods:
            await route.handler(scope, receive, send)
        else:
            await send_bytes(send, 405, METHOD_NOT_ALLOWED, extra_headers=[(b"allow", route.allow)])

    def _authorized(self, scope: Scope) -> bool:
        if scope["method"] == "OPTIONS":
            return True
        value = header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # Compare against every key so the time taken says nothing about which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        return matched

    @staticmethod
    async def _not_http(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Nothing to set up; answer the protocol so ``lifespan="on"`` servers work too.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})


def create_app(options: SimulatorOptions | None = None) -> SimulatorApp:
    """Build the simulator; ``uvicorn --factory functions.simulator.app:create_app`` works."""
    logger = logging.getLogger("uvicorn.error")
    if _DROP_FILTER not in logger.filters:
        logger.addFilter(_DROP_FILTER)
    return SimulatorApp(options or SimulatorOptions())
