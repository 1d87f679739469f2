"""The reverse proxy: Caddy's own checker accepts its config, and it routes for real.

The routing test runs the real Caddyfile (addresses swapped for loopback ones, see
``conftest.local_caddyfile``) in front of the functions started with compose's commands,
and asks it for every route of every function.
"""

from __future__ import annotations

import importlib
import time
import uuid

import httpx

from functions.core.settings import Settings
from functions.serve import FUNCTIONS
from tests.ops.conftest import Stack
from tests.ops.tools import MONITORING, run, venv_tool

CADDYFILE = MONITORING / "proxy" / "Caddyfile"
PROBES = {"/healthz", "/readyz", "/metrics"}


def test_caddy_validates_the_caddyfile() -> None:
    result = run(
        [venv_tool("caddy"), "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    )
    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stdout + result.stderr


def test_the_caddyfile_is_formatted() -> None:
    result = run([venv_tool("caddy"), "fmt", "--diff", str(CADDYFILE)])
    changed = [line for line in result.stdout.splitlines() if line[:1] in "+-"]
    assert result.returncode == 0, result.stderr
    assert changed == []


def function_routes(function: str) -> set[str]:
    """The API paths a function serves (its own probes and docs left out), as templates."""
    app = importlib.import_module(f"functions.{function}.app").create_app(Settings())
    return {
        route.path_format
        for route in app.routes
        if route.path_format not in PROBES and not route.path_format.startswith("/schema")
    }


def concrete(template: str) -> str:
    return (
        template.replace("{conversation_id}", str(uuid.uuid4()))
        .replace("{key_id}", str(uuid.uuid4()))
        .replace("{name}", "some-config")
    )


def test_every_route_of_every_function_reaches_that_function(stack: Stack) -> None:
    # Without a key every route is a 401 (or a 405 for the wrong method) from the function
    # that serves it; any other function, or the proxy itself, would say 404.
    checked = 0
    for function in FUNCTIONS:
        for template in function_routes(function):
            response = httpx.get(f"{stack.url}{concrete(template)}", timeout=10)
            assert response.status_code in {401, 405}, (function, template, response.text)
            assert "x-request-id" in response.headers  # a function answered, not the proxy
            checked += 1
    assert checked >= 9


def test_metrics_and_unknown_paths_are_not_served_publicly(stack: Stack) -> None:
    for path in ("/metrics", "/v2/anything", "/"):
        response = httpx.get(f"{stack.url}{path}", timeout=10)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert "x-request-id" not in response.headers


def test_the_proxy_streams_replies_as_they_come(traffic: Stack) -> None:
    # The simulator takes ~150 ms to the first token, then ~15 ms per token for 48: a
    # buffering proxy would hand over every event at once, at the end.
    headers = {"Authorization": f"Bearer {traffic.admin_secret}"}
    with httpx.Client(base_url=traffic.url, headers=headers, timeout=30) as client:
        conversation = client.post("/v1/conversations", json={}).json()
        arrivals: list[tuple[float, str]] = []
        started = time.monotonic()
        with client.stream(
            "POST",
            f"/v1/conversations/{conversation['id']}/messages",
            json={"content": "count slowly", "stream": True},
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: "):
                    arrivals.append((time.monotonic() - started, line.removeprefix("event: ")))
    first_delta = next(at for at, event in arrivals if event == "delta")
    done = next(at for at, event in arrivals if event == "done")
    assert done - first_delta > 0.3, arrivals
