"""The reverse proxy: Caddy's own checker accepts its config, and it routes for real.

The Caddyfile's routes (``routes.proxy_routes``) and the routes each function serves are
the same, both ways. The routing test runs the real Caddyfile (addresses swapped for
loopback ones, see ``conftest.local_caddyfile``) in front of the functions started with
compose's commands, and asks it for every route of every function.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx

from functions.serve import FUNCTIONS
from tests.ops.conftest import Stack
from tests.ops.routes import (
    CADDYFILE,
    app_routes,
    covers,
    function_routes,
    proxy_routes,
)
from tests.ops.tools import run, venv_tool


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


def test_the_proxy_routes_every_function_s_routes_to_it_and_nothing_else() -> None:
    routed = proxy_routes()
    assert set(routed) == set(FUNCTIONS)
    for function, patterns in routed.items():
        served = app_routes(function)
        # Each route the function serves (not its /metrics) is routed to it ...
        for template in function_routes(function):
            assert any(covers(p, template) for p in patterns), (function, template)
        # ... and each path routed to it is one it serves (``X/*`` needs a route under X).
        for pattern in patterns:
            assert any(covers(pattern, template) for template in served), (function, pattern)
            assert "/metrics" not in pattern, (function, pattern)
    # No path goes to two functions: Caddy would take the first, silently.
    everything = [pattern for patterns in routed.values() for pattern in patterns]
    assert len(everything) == len(set(everything)), routed


def test_the_openai_door_has_openai_s_paths() -> None:
    # What any OpenAI client asks of a base URL ending in /v1.
    assert proxy_routes()["openai"] >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/*",
    }


def concrete(template: str) -> str:
    return (
        template.replace("{conversation_id}", str(uuid.uuid4()))
        .replace("{key_id}", str(uuid.uuid4()))
        .replace("{name}", "some-config")
        .replace("{model_id}", "some-org/some-model")
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
    assert checked >= 14
    # The door answers in OpenAI's shape, which the OpenAI SDKs read.
    refused = httpx.get(f"{stack.url}/v1/models", timeout=10).json()
    assert refused["error"]["type"], refused


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


def test_the_proxy_streams_the_openai_door_s_chunks_as_they_come(traffic: Stack) -> None:
    headers = {"Authorization": f"Bearer {traffic.admin_secret}"}
    body = {
        "model": traffic.model,
        "messages": [{"role": "user", "content": "count slowly"}],
        "stream": True,
    }
    arrivals: list[float] = []
    with httpx.Client(base_url=traffic.url, headers=headers, timeout=30) as client:
        started = time.monotonic()
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line.removeprefix("data: "))
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        arrivals.append(time.monotonic() - started)
    assert len(arrivals) > 2, arrivals
    assert arrivals[-1] - arrivals[0] > 0.3, arrivals
