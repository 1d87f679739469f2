"""Which paths go to which function: what the functions serve, and what the proxy routes.

The Caddyfile is the one list of public routes. It is read here through Caddy's own
parser (``caddy adapt``), never a copy typed into a test, so every deployment that must
route the same way (the proxy, a later Helm chart's ingress) is checked against it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from typing import Any

from functions.core.settings import Settings
from tests.ops.tools import MONITORING, run, venv_tool

CADDYFILE = MONITORING / "proxy" / "Caddyfile"
# A function's own probes and /metrics: on its port, for Compose and Prometheus.
PROBES = {"/healthz", "/readyz", "/metrics"}


def app_routes(function: str) -> set[str]:
    """Every path template a function's app serves, probes and API docs included."""
    app = importlib.import_module(f"functions.{function}.app").create_app(Settings())
    return {route.path_format for route in app.routes}


def function_routes(function: str) -> set[str]:
    """The API paths a function serves (its own probes and docs left out), as templates."""
    return {
        path
        for path in app_routes(function)
        if path not in PROBES and not path.startswith("/schema")
    }


def _handlers(handlers: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every handler, subroutes opened."""
    for handler in handlers:
        yield handler
        for route in handler.get("routes", []):
            yield from _handlers(route.get("handle", []))


def proxy_routes() -> dict[str, set[str]]:
    """The Caddyfile's path matchers by the compose service they are proxied to."""
    adapted = run(
        [venv_tool("caddy"), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    )
    assert adapted.returncode == 0, adapted.stderr
    servers = json.loads(adapted.stdout)["apps"]["http"]["servers"]
    routes: dict[str, set[str]] = {}
    for server in servers.values():
        for route in server["routes"]:
            paths = {path for match in route.get("match", []) for path in match.get("path", [])}
            for handler in _handlers(route.get("handle", [])):
                if handler.get("handler") == "reverse_proxy":
                    service = handler["dynamic_upstreams"]["name"]
                    routes.setdefault(service, set()).update(paths)
    return routes


def covers(pattern: str, template: str) -> bool:
    """Whether a Caddy path pattern (exact, or ``prefix/*``) matches a route template."""
    if pattern.endswith("/*"):
        return template.startswith(pattern[:-1])
    return template == pattern
