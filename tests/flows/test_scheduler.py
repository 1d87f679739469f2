"""Scheduled runs happen by themselves: a real ``prefect server start``'s scheduler creates
the health check's runs and ``switchboard flows serve`` executes them.

Nobody in this test creates a flow run: the run that completes is one the server's
scheduler created from the served deployment's schedule (``auto_scheduled``), and its
verdict is in the gateway's database. A Prefect or SQLAlchemy release whose scheduler
fails on every tick (SQLAlchemy 2.1 with Prefect 3.9: ``InvalidRequestError: Can't
evaluate bulk DML statement``) leaves the deployment with no run at all, and this fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.flows.conftest import (
    SWITCHBOARD,
    PrefectServer,
    call,
    prefect_env,
    start_prefect_server,
    stop_by_pid,
    switchboard_env,
)
from tests.support.process import REPO_ROOT, start
from tests.support.simulator import async_running_simulator

# The shortest interval the settings accept: the first scheduled run is seconds away.
INTERVAL_S = 5
# From `flows serve`'s start to a completed scheduled run: the deployment's registration,
# the server's recent-deployments scheduler (every 5 s), the runner's poll (1 s here) and
# the run's subprocess, with a loaded machine's margin.
SCHEDULED_RUN_WITHIN_S = 240.0


async def _health_rows(url: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch("SELECT upstream, status FROM health_check"))
    finally:
        await conn.close()


def _runs_of(server: PrefectServer, deployment_name: str) -> tuple[list[dict[str, Any]], str]:
    """The deployment's flow runs (none while it is not registered) and why, if none."""
    with server.api() as api:
        response = api.get(f"/deployments/name/{deployment_name}")
        if response.status_code == 404:
            return [], "the deployment is not registered yet"
        response.raise_for_status()
        deployment_id = response.json()["id"]
        runs: list[dict[str, Any]] = call(
            api,
            "POST",
            "/flow_runs/filter",
            {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200},
        )
    return runs, f"{len(runs)} run(s), none completed"


@pytest.mark.timeout(SCHEDULED_RUN_WITHIN_S + 180)
async def test_the_scheduler_runs_the_health_check_by_itself(flows_db: str, tmp_path: Path) -> None:
    assert await _health_rows(flows_db) == []
    server_home, serve_home = tmp_path / "server", tmp_path / "serve"
    server_home.mkdir()
    serve_home.mkdir()
    server = await asyncio.to_thread(start_prefect_server, server_home)
    serve_log = (tmp_path / "serve.log").open("wb")
    serving: subprocess.Popen[bytes] | None = None
    try:
        async with async_running_simulator("--model", "sim-model") as upstream:
            env = prefect_env(
                serve_home,
                PREFECT_API_URL=server.api_url,
                PREFECT_RUNNER_POLL_FREQUENCY="1",
                SWITCHBOARD_HEALTH_CHECK_INTERVAL_S=str(INTERVAL_S),
                **switchboard_env(flows_db, upstream.base_url),
            )
            serving = start(  # its own group: its runs' subprocesses die with it
                [*SWITCHBOARD, "flows", "serve"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=serve_log,
                stderr=serve_log,
            )
            started = time.monotonic()
            deadline = started + SCHEDULED_RUN_WITHIN_S
            completed: dict[str, Any] | None = None
            why = "not asked yet"
            while completed is None:
                if serving.poll() is not None:
                    pytest.fail(f"flows serve exited with {serving.returncode}")
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"no scheduled health-check run completed in {SCHEDULED_RUN_WITHIN_S} s "
                        f"({why}); Prefect server's log:\n{server.log_text()[-4000:]}"
                    )
                runs, why = await asyncio.to_thread(_runs_of, server, "health-check/switchboard")
                # A run due while the previous one still runs is cancelled (the deployment's
                # limit of one): at a 5 s interval on a busy machine, that is expected.
                failed = [run for run in runs if run["state"]["type"] in {"FAILED", "CRASHED"}]
                assert not failed, [run["state"] for run in failed]
                done = [run for run in runs if run["state"]["type"] == "COMPLETED"]
                completed = done[0] if done else None
                if completed is None:
                    await asyncio.sleep(1)
            took = time.monotonic() - started
            # The scheduler made it: nobody here asked for a run.
            assert completed["auto_scheduled"] is True
            assert completed["created_by"]["type"] == "SCHEDULE", completed["created_by"]
            [verdict] = {tuple(row) for row in await _health_rows(flows_db)}
            assert verdict == (upstream.base_url, "ok")
        assert "Can't evaluate bulk DML" not in server.log_text()
        print(f"\nfirst scheduled health-check run completed {took:.1f} s after `flows serve`")
    finally:
        if serving is not None:
            stop_by_pid(serving)
        serve_log.close()
        stop_by_pid(server.process)
        server.log.close()
