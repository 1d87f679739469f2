"""Per-router policy: how a router writes its errors and how strictly it reads bodies.

A door speaks its callers' dialect. The chat API answers in Switchboard's error shape and
refuses an unknown body field (a typo is reported, not ignored); an OpenAI-compatible door
answers in OpenAI's shape and ignores fields it does not read, as OpenAI and vLLM do. The
choice is made where a router is built, with :meth:`RouterPolicy.router`, not app-wide, so
routers with different policies share one app (the gateway).

What an exception means (status, code, message) is decided once, by
``functions.core.web.errors.problem_of``; a policy only chooses the renderer. A successful
request pays nothing for this: Litestar resolves a route's exception handlers when it
raises, and the body decoder is chosen once per route (``functions.core.web.body``).

An error raised before any route is chosen (no route for the path: 404; a route without
the method: 405) is written by the policy of the router whose path holds the request's
path (:class:`PolicyByPath`, the app's own exception handler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from litestar import Request, Response, Router
from litestar.types import ControllerRouterHandler, ExceptionHandlersMap

from functions.core.schemas import Output
from functions.core.web.errors import (
    ErrorHeaders,
    ErrorShape,
    error_response,
    no_headers,
    openai_body,
    openai_headers,
    problem_of,
    switchboard_body,
)
from functions.core.web.schemas import ErrorBody, OpenAIErrorBody

POLICY_OPT = "router_policy"
"""The key under which a router's policy sits in its ``opt`` (and so in each route's)."""

UnknownFields = Literal["forbid", "ignore"]


@dataclass(frozen=True, slots=True)
class RouterPolicy:
    """A router's error shape and body strictness.

    ``shape`` writes an error's body, ``error_schema`` documents it (OpenAPI), ``headers``
    adds the dialect's headers to the problem's own (OpenAI's ``x-should-retry``).
    ``unknown_fields``: ``forbid`` makes a body field the type does not declare a 400
    naming it; ``ignore`` drops it (at any depth) and reads the rest as strictly.
    """

    name: str
    shape: ErrorShape
    error_schema: type[Output]
    unknown_fields: UnknownFields
    headers: ErrorHeaders = no_headers

    def handle(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        """The exception handler: the one mapping, written in this policy's shape."""
        problem = problem_of(request, exc)
        extra = self.headers(problem)
        if extra:
            problem = problem._replace(headers={**(problem.headers or {}), **extra})
        return error_response(request, problem, self.shape)

    @property
    def exception_handlers(self) -> ExceptionHandlersMap:
        # One entry for every exception: Litestar merges a route's handlers from the app
        # down, the nearest layer winning per key, so a router must own every key it
        # answers for (a more specific key left to the app would win over its Exception).
        return {Exception: self.handle}

    def router(
        self,
        *,
        path: str,
        route_handlers: Sequence[ControllerRouterHandler],
        opt: dict[str, Any] | None = None,
        **options: Any,
    ) -> Router:
        """A Litestar ``Router`` under this policy (its other options passed through)."""
        return Router(
            path=path,
            route_handlers=route_handlers,
            exception_handlers=self.exception_handlers,
            opt={**(opt or {}), POLICY_OPT: self},
            **options,
        )


SWITCHBOARD = RouterPolicy("switchboard", switchboard_body, ErrorBody, "forbid")
"""Switchboard's own API: its error shape, unknown fields refused."""

OPENAI = RouterPolicy("openai", openai_body, OpenAIErrorBody, "ignore", openai_headers)
"""An OpenAI-compatible door: OpenAI's error shape, unknown fields ignored."""


def policy_of(opt: dict[str, Any]) -> RouterPolicy:
    """The policy a route's (merged) ``opt`` carries; Switchboard's when none does."""
    policy = opt.get(POLICY_OPT)
    return policy if isinstance(policy, RouterPolicy) else SWITCHBOARD


class PolicyByPath:
    """The app's exception handler: errors no router caught (no route matched, or a route
    of the app itself) are written by the policy of the router whose path holds the
    request's path, the longest such; ``default``'s otherwise. Routers are the app's own
    (a router nested in another takes its parent's path here)."""

    def __init__(
        self, route_handlers: Sequence[ControllerRouterHandler], default: RouterPolicy
    ) -> None:
        self.default = default
        found = [
            (handler.path, handler.opt[POLICY_OPT])
            for handler in route_handlers
            if isinstance(handler, Router) and isinstance(handler.opt.get(POLICY_OPT), RouterPolicy)
        ]
        self._prefixes: list[tuple[str, RouterPolicy]] = sorted(
            found, key=lambda item: len(item[0]), reverse=True
        )

    def policy_for(self, path: str) -> RouterPolicy:
        for prefix, policy in self._prefixes:
            if prefix in ("/", path) or path.startswith(prefix + "/"):
                return policy
        return self.default

    def handle(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        return self.policy_for(request.url.path).handle(request, exc)

    @property
    def exception_handlers(self) -> ExceptionHandlersMap:
        return {Exception: self.handle}
