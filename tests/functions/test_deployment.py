"""How the functions start and degrade: each alone, with no LLM, with no database."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import psutil
import pytest

from functions.core.db.engine import engine_from_url, use_engine
from functions.core.db.migrate import migrate
from functions.core.keys import service as keys
from functions.core.keys.schemas import ApiKeyCreate
from functions.core.runtime import POOL_RETRY_S
from tests.support import process
from tests.support.databases import (
    create_postgres_database,
    drop_postgres_database,
    server_url,
    with_database,
)
from tests.support.gateway import GatewayProcess
from tests.support.process import REPO_ROOT, free_port, scaled
from tests.support.simulator import SimulatorProcess


@pytest.fixture
async def fresh_db() -> AsyncIterator[str]:
    url = await create_postgres_database("switchboard_deploy")
    engine = engine_from_url(url)
    use_engine(engine)
    await migrate(engine)
    yield url
    await drop_postgres_database(url)


@pytest.mark.parametrize("function", ["chat", "configs", "keys"])
async def test_each_function_runs_alone_with_its_probes(
    fresh_db: str, simulators: dict[str, SimulatorProcess], function: str
) -> None:
    secret = (await keys.create_key(ApiKeyCreate(name="a", scopes=["admin", "chat"]))).secret
    with GatewayProcess(fresh_db, [simulators["sim-model"].base_url], function=function) as app:
        async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["function"] == function
            assert ready.json()["database"]["status"] == "ok"
            # configs asks the upstreams whether a written model is served (a warning)
            expected_llm = "simulated" if function in ("chat", "configs") else "not_used"
            assert ready.json()["llm"]["status"] == expected_llm
            assert "switchboard_http_requests_total" in (await client.get("/metrics")).text
            own = {"chat": "/v1/conversations", "configs": "/v1/configs", "keys": "/v1/keys"}
            headers = {"Authorization": f"Bearer {secret}"}
            for name, path in own.items():
                status = (await client.get(path, headers=headers)).status_code
                assert status == (200 if name == function else 404), (name, status)


async def test_with_no_llm_reads_work_and_sends_fail_fast(fresh_db: str) -> None:
    dead_llm = f"http://127.0.0.1:{free_port()}/v1"
    secret = (await keys.create_key(ApiKeyCreate(name="a", scopes=["admin", "chat"]))).secret
    with GatewayProcess(fresh_db, [dead_llm]) as app:
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=app.root_url, headers=headers, timeout=10) as client:
            ready = (await client.get("/readyz")).json()
            assert (ready["status"], ready["llm"]["status"]) == ("degraded", "down")
            await client.post("/v1/configs", json={"name": "c", "model": "m", "is_default": True})
            conv = (await client.post("/v1/conversations", json={"title": "t"})).json()
            assert (await client.get("/v1/conversations")).status_code == 200

            started = time.monotonic()
            response = await client.post(
                f"/v1/conversations/{conv['id']}/messages", json={"content": "hello?"}
            )
            assert time.monotonic() - started < 3
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "llm_unavailable"
            assert response.headers["retry-after"]
            history = (await client.get(f"/v1/conversations/{conv['id']}/messages")).json()
            assert [(m["role"], m["status"]) for m in history["data"]] == [
                ("user", "complete"),
                ("assistant", "failed"),
            ]


async def test_with_no_database_it_starts_and_answers_503() -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    with GatewayProcess(unreachable, ["http://127.0.0.1:9/v1"]) as app:
        async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["database"]["status"] == "down"
            response = await client.get(
                "/v1/conversations", headers={"Authorization": "Bearer sb-" + "x" * 43}
            )
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["code"] == "database_unavailable"
            assert "SELECT" not in error["message"]
            assert "Traceback" not in response.text


async def test_it_recovers_when_the_database_comes_back() -> None:
    """Started against a database that does not exist yet; it serves once it does."""
    name = f"switchboard_late_{uuid.uuid4().hex[:8]}"
    url = with_database(server_url(), name)
    with GatewayProcess(url, ["http://127.0.0.1:9/v1"]) as app:
        async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 503
            admin = await asyncpg.connect(server_url())
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            engine = engine_from_url(url)
            use_engine(engine)
            await migrate(engine)
            secret = (await keys.create_key(ApiKeyCreate(name="late"))).secret
            deadline = time.monotonic() + scaled(60)
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            listed = await client.get(
                "/v1/conversations", headers={"Authorization": f"Bearer {secret}"}
            )
            assert listed.status_code == 200
            # The pool is opened again in the background, every POOL_RETRY_S.
            deadline = time.monotonic() + scaled(POOL_RETRY_S + 30)
            while "database.pool_opened" not in app.log_text():
                assert time.monotonic() < deadline, app.log_text()
                await asyncio.sleep(0.2)
    await drop_postgres_database(url)


async def test_several_workers_share_one_metrics_page(
    fresh_db: str, simulators: dict[str, SimulatorProcess]
) -> None:
    with GatewayProcess(fresh_db, [simulators["sim-model"].base_url], workers=2) as app:
        async with httpx.AsyncClient(base_url=app.root_url, timeout=10) as client:
            for _ in range(20):  # new connections, so both workers get some
                async with httpx.AsyncClient(base_url=app.root_url) as fresh:
                    assert (await fresh.get("/healthz")).status_code == 200
            # Each worker's counts reach the shared files within a second of its requests.
            deadline = time.monotonic() + scaled(10)
            while (counted := _healthz_count(text := (await client.get("/metrics")).text)) < 20:
                assert time.monotonic() < deadline, f"only {counted} of 20 /healthz counted"
                await asyncio.sleep(0.2)
    assert "switchboard_llm_upstream_state{" in text


def _healthz_count(page: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("switchboard_http_requests_total{") and 'route="/healthz"' in line
    )


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, waiting to be reaped
    except psutil.NoSuchProcess:
        return True


def _workers(supervisor: psutil.Process) -> list[psutil.Process]:
    """uvicorn's workers (multiprocessing's spawned children, not its resource tracker)."""
    found = []
    for child in supervisor.children():
        with contextlib.suppress(psutil.Error):
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
    return found


async def test_workers_end_when_their_supervisor_is_killed(
    fresh_db: str, simulators: dict[str, SimulatorProcess]
) -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: they end by themselves
    (the kernel's parent-death signal, a watchdog elsewhere) and the port goes quiet."""
    with GatewayProcess(fresh_db, [simulators["sim-model"].base_url], workers=2) as app:
        assert app.pid is not None
        supervisor = psutil.Process(app.pid)
        deadline = time.monotonic() + scaled(60)
        while len(workers := _workers(supervisor)) < 2:
            assert time.monotonic() < deadline, "the two workers never started"
            await asyncio.sleep(0.1)
        descendants = supervisor.children(recursive=True)
        supervisor.kill()  # the supervisor alone, as the OOM killer or `kill -9` would
        deadline = time.monotonic() + scaled(30)
        while alive := [p for p in descendants if not _gone(p)]:
            assert time.monotonic() < deadline, f"orphans still alive: {alive} of {workers}"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{app.root_url}/healthz")


WATCHED_CHILD = """
import os, sys, time
import functions.serve as serve
serve.set_parent_death_signal = lambda sig: None  # the watchdog alone, as off Linux
serve.end_with_parent(os.getppid(), interval=0.1)
print("armed", flush=True)
time.sleep(600)
"""
PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {WATCHED_CHILD!r}])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_without_the_kernels_signal_a_watchdog_ends_the_orphan() -> None:
    parent = process.start(
        [sys.executable, "-c", PARENT],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert parent.stdout.readline().strip() == "armed"
        parent.kill()
        parent.wait(scaled(10))
        deadline = time.monotonic() + scaled(10)
        while not _gone(child):
            assert time.monotonic() < deadline, "the orphan outlived its parent"
            time.sleep(0.05)
    finally:
        process.stop(parent)
        if parent.stdout is not None:
            parent.stdout.close()
