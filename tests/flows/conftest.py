"""Flow fixtures: Prefect's test harness (once per session), a real Prefect server, settings.

Flows read their settings where every process edge does (``load_settings()``, from
``SWITCHBOARD_*``), so a test sets the environment (:func:`flow_env`) and runs the flow
in-process on its own event loop, against the harness's temporary Prefect API. The flow
opens its own engine and makes it current; :func:`run_flow` makes the test's engine
current again afterwards.

Commands that start Prefect on their own (``flows run``, ``flows serve``, a worker) run as
subprocesses with an environment built by :func:`prefect_env`: a temporary
``PREFECT_HOME``, telemetry off, and no ``PREFECT_*`` variable from outside.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from piccolo.engine.base import Engine
from prefect.client.schemas.objects import FlowRun
from prefect.context import SyncClientContext
from prefect.states import State

from functions.core.db.engine import use_engine
from tests.conftest import truncate_all
from tests.support.process import HOST, REPO_ROOT, free_port, start, stop
from tests.support.timing import scaled

PREFECT_SERVER_START_S = scaled(90.0)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """Prefect's temporary API for every in-process flow run: started once (it is slow)."""
    from prefect.testing.utilities import prefect_test_harness

    # Its uvicorn subprocess imports all of Prefect's server: minutes on a loaded machine.
    with prefect_test_harness(server_startup_timeout=int(scaled(180))):
        yield


def prefect_api_url() -> str:
    """The harness's API, for subprocesses that should use it too."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness is not running"
    return str(url)


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that starts Prefect: nothing of ours leaks in."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "SWITCHBOARD_"))
    }
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


@pytest.fixture
def flow_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set ``SWITCHBOARD_*`` settings for the flows this test runs in-process."""

    def set_settings(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"SWITCHBOARD_{name.upper()}", str(value))

    return set_settings


@pytest.fixture
async def flows_db(pg_url: str, pg_engine: Engine[Any]) -> AsyncIterator[str]:
    """The session's PostgreSQL database, emptied after the test."""
    use_engine(pg_engine)
    yield pg_url
    use_engine(pg_engine)
    await truncate_all(pg_engine)


@dataclass
class Ran:
    """One in-process flow run: its result, its id, and how long the call took."""

    result: Any
    flow_run_id: Any
    seconds: float


async def flow_state(flow: Callable[..., Awaitable[State[Any]]], **parameters: Any) -> State[Any]:
    """Run ``flow`` once here, whatever its outcome: its final state. The flow's runtime
    is its own: the test's engine is the test's before and after."""
    # Prefect's engine otherwise opens a sync API client of its own per run and never
    # closes it (results.py, reading the server's default result storage): a socket left
    # to the garbage collector, which pytest reports as an error.
    with SyncClientContext.get_or_create():
        state: State[Any] = await flow(**parameters, return_state=True)
    return state


async def run_flow(flow: Callable[..., Awaitable[State[Any]]], **parameters: Any) -> Ran:
    """Run ``flow`` once here, which must succeed (see :func:`flow_state`)."""
    started = time.perf_counter()
    state = await flow_state(flow, **parameters)
    seconds = time.perf_counter() - started
    assert state.is_completed(), state
    return Ran(
        result=await state.result(), flow_run_id=state.state_details.flow_run_id, seconds=seconds
    )


async def read_flow_run(flow_run_id: Any) -> FlowRun:
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


# --- a real Prefect server -----------------------------------------------------------


@dataclass
class PrefectServer:
    """``prefect server start`` on a free port, with its own home and SQLite database."""

    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=10)


def start_prefect_server(home: Path, **extra: str) -> PrefectServer:
    """``prefect server start`` (API only, its SQLite database in ``home``) on a free port,
    with ``extra`` environment variables; waits until its API answers."""
    port = free_port()
    env = prefect_env(
        home,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'server.db'}",
        PREFECT_UI_ENABLED="false",
        **extra,
    )
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop_by_pid's caller
    process = start(  # its own process group: stopped whole, by its pid
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    server = PrefectServer(home=home, port=port, process=process, log=log)
    deadline = time.monotonic() + PREFECT_SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {process.returncode}:\n{server.log_text()}"
            )
        try:
            if httpx.get(f"{server.api_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_by_pid(process)
    raise RuntimeError(
        f"prefect server did not start in {PREFECT_SERVER_START_S} s:\n{server.log_text()}"
    )


def stop_by_pid(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM the process, then SIGKILL its group: the process if it lingers, and children
    that outlived it in the group (a flow run's subprocess, say)."""
    return stop(process, timeout)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    try:
        yield server
    finally:
        stop_by_pid(server.process)
        server.log.close()


SWITCHBOARD = [sys.executable, "-m", "functions.cli"]


def switchboard_env(database_url: str, llm_url: str) -> dict[str, str]:
    """The settings of a ``switchboard flows`` subprocess: a database and one upstream."""
    return {
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_LLM_URLS": llm_url,
        "SWITCHBOARD_LOG_FORMAT": "json",
    }


def call(api: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    """One API call, retried while the server says 503: Prefect's server on SQLite answers
    that when its database is busy (its scheduler fills the schedules), and its own
    clients retry too."""
    for _ in range(20):
        response = api.request(method, path, json=body)
        if response.status_code != 503:
            break
        time.sleep(0.25)
    response.raise_for_status()
    return response.json()


async def wait_for(
    predicate: Callable[[], Awaitable[Any]], *, within: float, interval: float = 0.05
) -> Any:
    """Await ``predicate()`` until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(interval)
