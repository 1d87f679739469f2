"""``switchboard flows ...`` as an operator runs it: real processes, real Prefect servers.

- ``flows run`` with no Prefect server anywhere: Prefect's temporary API comes and goes
  with the command, which writes nothing outside its ``PREFECT_HOME`` and leaves no
  process behind;
- ``flows serve`` against ``prefect server start``: the deployments, their schedules,
  tags, parameters and limits as the server (and so its UI) holds them, and a run of the
  served deployment, executed by the serving process;
- ``flows deploy --pool``: the same deployments for a work pool, and a Prefect worker
  running one of them from the installed package.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from click.testing import CliRunner
from prefect import get_client

from functions.core.db.engine import engine_from_url
from functions.core.db.migrate import migrate
from tests.flows.conftest import (
    SWITCHBOARD,
    PrefectServer,
    call,
    prefect_api_url,
    prefect_env,
    stop_by_pid,
    switchboard_env,
    wait_for,
)
from tests.support.databases import sqlite_url
from tests.support.process import REPO_ROOT, free_port, start
from tests.support.process import run as run_process
from tests.support.simulator import SimulatorProcess
from tests.support.timing import scaled

DEPLOYMENTS = {"health-check/switchboard": 60.0, "maintenance/switchboard": 300.0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess("--model", "sim-model", "--max-model-len", "4096")
    try:
        yield sim.start()
    finally:
        sim.close()


def test_list_shows_every_flow_and_its_schedule() -> None:
    from flows.cli import flows

    result = CliRunner().invoke(flows, ["list", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["deployment"]: row for row in json.loads(result.output)}
    assert {name: listed[name]["every_s"] for name in DEPLOYMENTS} == DEPLOYMENTS
    assert listed["health-check/switchboard"]["parameters"] == ["send_completion", "retention_days"]


def test_the_catalog_is_what_the_flows_say() -> None:
    # `flows list` and `flows run X --help` read the catalog, not the flows (no Prefect).
    from flows.catalog import CATALOG_FILE, generate

    assert generate() == CATALOG_FILE.read_bytes(), (
        "flows/catalog.json is out of date: run `python -m flows.catalog`"
    )


# Well under Prefect's import alone (10 to 13 s on a busy machine, 3 s idle).
WITHOUT_PREFECT_S = 6.0


def without_prefect(
    command: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``switchboard COMMAND``, which must neither import Prefect nor take long."""
    started = time.monotonic()
    result = run_process(
        [sys.executable, "-X", "importtime", "-m", "functions.cli", *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - started
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "flows.catalog" in imported  # the import log is what this reads
    assert [name for name in imported if name.split(".")[0] == "prefect"] == []
    # The import log above is the proof; the time says no retries or waits came first.
    assert took < scaled(WITHOUT_PREFECT_S), f"{' '.join(command)} took {took:.1f} s"
    return result


@pytest.mark.parametrize(
    "command",
    [
        ["flows", "--help"],
        ["flows", "list"],
        ["flows", "list", "--json"],
        ["flows", "run", "--help"],
        ["flows", "run", "export", "--help"],
        ["flows", "run", "evaluate", "--help"],
    ],
    ids=" ".join,
)
def test_listing_and_help_do_not_import_prefect(tmp_path: Path, command: list[str]) -> None:
    result = without_prefect(command, tmp_path, prefect_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(("Usage:", "NAME", "["))


@pytest.mark.parametrize(
    ("command", "code", "says"),
    [
        (
            ["export", "--format", "xml"],
            2,
            "Invalid value for '--format': 'xml' is not one of 'jsonl', 'csv', 'parquet'",
        ),
        (["export", "--out", "a-file/exports"], 2, "a-file is a file, not a folder"),
        (["export", "--out", "s4://bucket/x"], 2, "invalid destination 's4://bucket/x'"),
        (["export", "--out", "out", "--config", "nope"], 2, "no configuration 'nope'"),
        (["evaluate", "--dataset", "missing.jsonl", "--config", "a"], 2, "no dataset at"),
        (["evaluate", "--dataset", ".", "--config", "a"], 2, "cannot read the dataset ."),
        (["evaluate", "--dataset", "bad.jsonl", "--config", "a"], 2, "line 1:"),
        (["evaluate", "--dataset", "good.jsonl", "--config", "nope"], 2, "no configuration"),
        (
            ["evaluate", "--dataset", "good.jsonl", "--config", "a", "--concurrency", "0"],
            2,
            "invalid value for --concurrency: 0 is less than the minimum of 1",
        ),
        (
            ["health-check", "--retention-days", "0"],
            2,
            "invalid value for --retention-days: 0.0 is less than or equal to the minimum of 0",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_run_refuses_a_mistake_before_prefect_starts(
    flows_db: str, tmp_path: Path, command: list[str], code: int, says: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "bad.jsonl").write_text('{"id": "1"}\n')
    (tmp_path / "good.jsonl").write_text('{"id": "1", "prompt": "hi"}\n')
    env = prefect_env(tmp_path, SWITCHBOARD_DATABASE_URL=flows_db)
    result = without_prefect(["flows", "run", *command], tmp_path, env)
    assert result.returncode == code, result.stderr[-3000:]
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_run_on_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    # A database that exists with none (or not all) of the tables: the run would fail on
    # its first query, after Prefect's start and the tasks' retries.
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.execute("CREATE TABLE unrelated (x INTEGER)")
    env = prefect_env(tmp_path, SWITCHBOARD_DATABASE_URL=sqlite_url(tmp_path, "old.sqlite"))
    for flow in (["export", "--out", "out"], ["health-check"], ["maintenance"]):
        result = without_prefect(["flows", "run", *flow], tmp_path, env)
        assert result.returncode == 3, result.stderr[-3000:]
        assert "the database is not migrated" in result.stderr
        assert "run `switchboard db migrate`" in result.stderr


def test_run_gives_prefect_s_temporary_api_time_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.cli import STARTUP_SETTING, _scheduled

    monkeypatch.delenv(STARTUP_SETTING, raising=False)
    _scheduled()
    assert os.environ[STARTUP_SETTING] == "120"  # Prefect's own 20 s failed under load
    monkeypatch.setenv(STARTUP_SETTING, "7")
    _scheduled()
    assert os.environ[STARTUP_SETTING] == "7"  # the user's choice stands


async def test_run_names_the_setting_when_the_temporary_api_does_not_start(
    tmp_path: Path,
) -> None:
    database = sqlite_url(tmp_path, "flows-run.sqlite")
    await migrate(engine_from_url(database))
    env = prefect_env(
        tmp_path,
        SWITCHBOARD_DATABASE_URL=database,
        # No time at all: the API is never found up, however fast the machine.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0",
    )
    result = await asyncio.to_thread(
        run_process,
        [*SWITCHBOARD, "flows", "run", "maintenance"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == (
        "error: Prefect's temporary API did not start within 0 s: set "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or run `prefect server "
        "start` and set PREFECT_API_URL"
    )
    assert "Traceback" not in result.stderr


async def test_run_needs_no_prefect_server(tmp_path: Path, upstream: SimulatorProcess) -> None:
    work, home, prefect_home = (tmp_path / name for name in ("work", "home", "prefect-home"))
    for folder in (work, home, prefect_home):
        folder.mkdir()
    database = sqlite_url(tmp_path, "flows-run.sqlite")
    await migrate(engine_from_url(database))
    env = prefect_env(prefect_home, HOME=str(home), **switchboard_env(database, upstream.base_url))

    started = time.monotonic()
    result = await asyncio.to_thread(
        run_process,
        [*SWITCHBOARD, "flows", "run", "health-check", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [checked] = report["upstreams"]
    assert checked["verdict"]["status"] == "ok"
    assert checked["max_model_len"] == {"sim-model": 4096}
    with sqlite3.connect(tmp_path / "flows-run.sqlite") as db:
        assert db.execute("SELECT status FROM health_check").fetchall() == [("ok",)]
    assert (
        "starting a temporary Prefect API" in result.stderr
        or "Starting temporary server" in result.stderr
    )
    # Nothing written where it ran, nor in the home folder: only in PREFECT_HOME.
    assert list(work.iterdir()) == []
    assert list(home.iterdir()) == []
    assert (prefect_home / "prefect.db").exists()
    # The temporary server went with the command.
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(prefect_home) in " ".join(_environ(p)) and p.pid != psutil.Process().pid
    ]
    assert leftovers == []
    print(f"\nflows run health-check, no server: {took:.1f} s (a temporary Prefect API included)")


def _environ(process: psutil.Process) -> list[str]:
    try:
        return [f"{k}={v}" for k, v in process.environ().items()]
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def test_serve_and_deploy_need_a_prefect_api_url(tmp_path: Path) -> None:
    result = run_process(
        [*SWITCHBOARD, "flows", "serve"],
        cwd=tmp_path,
        env=prefect_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "set PREFECT_API_URL" in result.stderr


@pytest.mark.parametrize("command", [["serve"], ["deploy", "--pool", "p"]], ids=" ".join)
def test_serve_and_deploy_say_at_once_that_the_api_cannot_be_reached(
    tmp_path: Path, command: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    result = run_process(
        [*SWITCHBOARD, "flows", *command],
        cwd=tmp_path,
        env=prefect_env(tmp_path, PREFECT_API_URL=url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: the Prefect API at {url} cannot be reached")
    assert "Connection refused" in result.stderr
    assert "serving" not in result.stderr
    assert "Traceback" not in result.stderr


def deployment(api: httpx.Client, name: str) -> dict[str, Any]:
    found: dict[str, Any] = call(api, "GET", f"/deployments/name/{name}")
    return found


def wait_for_run(api: httpx.Client, flow_run_id: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        run: dict[str, Any] = call(api, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run still {run['state']['type']} after {within} s")
        time.sleep(0.1)


async def test_serve_registers_scheduled_deployments_and_runs_them(
    prefect_server: PrefectServer, flows_db: str, upstream: SimulatorProcess, tmp_path: Path
) -> None:
    env = prefect_env(
        tmp_path,
        PREFECT_API_URL=prefect_server.api_url,
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        **switchboard_env(flows_db, upstream.base_url),
    )
    log = (tmp_path / "serve.log").open("wb")
    serving = start(  # its own group: started once; the test then polls its API
        [*SWITCHBOARD, "flows", "serve"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        with prefect_server.api() as api:

            async def registered() -> bool:
                found = call(api, "POST", "/deployments/filter", {})
                return {d["entrypoint"] for d in found} >= {
                    "flows.health_check.health_check",
                    "flows.maintenance.maintenance",
                }

            await wait_for(registered, within=60, interval=0.2)
            for name, every_s in DEPLOYMENTS.items():
                found = deployment(api, name)
                [schedule] = found["schedules"]
                assert schedule["active"]
                assert schedule["schedule"]["interval"] == every_s
                assert not found["paused"]
                assert "switchboard" in found["tags"]
                assert found["description"]
                assert found["version"] == "0.1.0"
                assert found["global_concurrency_limit"]["limit"] == 1
                assert found["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
                assert found["work_pool_name"] is None  # served: runs in `flows serve`
            health = deployment(api, "health-check/switchboard")
            properties = health["parameter_openapi_schema"]["properties"]
            assert properties["retention_days"]["anyOf"][0]["exclusiveMinimum"] == 0
            assert properties["send_completion"]["anyOf"][0]["type"] == "boolean"

            created = time.monotonic()
            flow_run = call(api, "POST", f"/deployments/{health['id']}/create_flow_run", {})
            run = await asyncio.to_thread(wait_for_run, api, flow_run["id"], 90)
            picked_up_and_done = time.monotonic() - created
            assert run["state"]["type"] == "COMPLETED", (run["state"], log_text(tmp_path))

            async def logged() -> list[str]:
                logs = call(
                    api,
                    "POST",
                    "/logs/filter",
                    {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}},
                )
                messages = [entry["message"] for entry in logs]
                return messages if any(m.startswith("health.verdict ") for m in messages) else []

            # The run's own log lines, in the run's log in Prefect (stored a moment later).
            assert await wait_for(logged, within=15, interval=0.2)
            artifacts = call(
                api,
                "POST",
                "/artifacts/filter",
                {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}},
            )
            assert [artifact["key"] for artifact in artifacts] == ["upstream-health"]
        rows = await _count(flows_db, "SELECT count(*) FROM health_check")
        assert rows >= 1
        print(
            f"\nflows serve: a served health-check run took {run['total_run_time']:.2f} s "
            f"(flow), {picked_up_and_done:.1f} s from creation to completed"
        )
    finally:
        code = stop_by_pid(serving)
        log.close()
    assert code in (0, -15, 143), log_text(tmp_path)
    with prefect_server.api() as api:
        # A clean stop pauses the schedules: nothing piles up while nothing serves.
        assert deployment(api, "health-check/switchboard")["paused"]


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "serve.log").read_text(errors="replace")[-5000:]


async def _count(url: str, sql: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        value = await conn.fetchval(sql)
    finally:
        await conn.close()
    return int(value)


async def test_deploy_to_a_work_pool_and_a_worker_runs_it(
    flows_db: str, upstream: SimulatorProcess, tmp_path: Path
) -> None:
    api_url = prefect_api_url()  # the harness's server
    env = prefect_env(
        tmp_path, PREFECT_API_URL=api_url, **switchboard_env(flows_db, upstream.base_url)
    )

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return run_process(
            list(command),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    created = await asyncio.to_thread(
        run, sys.executable, "-m", "prefect", "work-pool", "create", "sb-pool", "--type", "process"
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = await asyncio.to_thread(run, *SWITCHBOARD, "flows", "deploy", "--pool", "sb-pool")
    assert deployed.returncode == 0, deployed.stderr
    assert "prefect worker start --pool sb-pool" in deployed.stderr

    async with get_client() as client:
        for name, every_s in DEPLOYMENTS.items():
            found = await client.read_deployment_by_name(name)
            assert found.work_pool_name == "sb-pool"
            assert found.entrypoint is not None
            assert found.entrypoint.startswith("flows.")
            assert [s.schedule.interval.total_seconds() for s in found.schedules] == [every_s]  # type: ignore[union-attr]
        maintenance = await client.read_deployment_by_name("maintenance/switchboard")
        flow_run = await client.create_flow_run_from_deployment(maintenance.id)

    started = time.monotonic()
    worker = await asyncio.to_thread(
        run, sys.executable, "-m", "prefect", "worker", "start", "--pool", "sb-pool", "--run-once"
    )
    took = time.monotonic() - started
    assert worker.returncode == 0, worker.stdout + worker.stderr

    async def finished() -> Any:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run.id)
        return run if run.state is not None and run.state.is_final() else None

    done = await wait_for(finished, within=30, interval=0.2)
    assert done.state.is_completed(), worker.stdout + worker.stderr
    print(
        f"\nflows deploy: a worker pulled and ran maintenance in {took:.1f} s (its start included)"
    )
