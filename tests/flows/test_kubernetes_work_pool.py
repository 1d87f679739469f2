"""The Helm chart's Kubernetes work pool on a real Prefect server: the hook's two commands
(deploy/helm/switchboard/templates/flows.yaml) create the pool from the chart's base job
template and register every flow for it, each run then taking the pool's image and
settings (docs/kubernetes.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from prefect import get_client

from flows import catalog
from tests.deploy.conftest import VALUE_SETS, component, of_kind, render
from tests.flows.conftest import SWITCHBOARD, prefect_api_url, prefect_env, switchboard_env
from tests.support.process import run as run_process

POOL = "switchboard-kubernetes-test"


async def test_the_hook_creates_the_charts_work_pool_and_registers_every_flow(
    flows_db: str, tmp_path: Path
) -> None:
    objects = render(VALUE_SETS["vllm-production-stack"])
    [pool_map] = [
        m for m in of_kind(objects, "ConfigMap").values() if "work-pool" in m["metadata"]["name"]
    ]
    template = json.loads(pool_map["data"]["base-job-template.json"])
    (tmp_path / "base-job-template.json").write_text(json.dumps(template))
    [hook] = [j for j in of_kind(objects, "Job").values() if component(j) == "flows-deploy"]
    assert (
        "/etc/switchboard/base-job-template.json"
        in hook["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    )
    env = prefect_env(
        tmp_path,
        PREFECT_API_URL=prefect_api_url(),
        **switchboard_env(flows_db, "http://127.0.0.1:9/v1"),
    )

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return run_process(
            list(command), cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )

    # What the hook runs, with the template where its ConfigMap is mounted.
    created = await asyncio.to_thread(
        run,
        sys.executable,
        "-m",
        "prefect",
        "work-pool",
        "create",
        POOL,
        "--type",
        "kubernetes",
        "--overwrite",
        "--base-job-template",
        str(tmp_path / "base-job-template.json"),
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = await asyncio.to_thread(run, *SWITCHBOARD, "flows", "deploy", "--pool", POOL)
    assert deployed.returncode == 0, deployed.stderr

    async with get_client() as client:
        pool = await client.read_work_pool(POOL)
        assert pool.type == "kubernetes"
        assert pool.base_job_template == template
        image = pool.base_job_template["variables"]["properties"]["image"]["default"]
        assert image == "registry.example.com/switchboard-flows:0.1.0"
        for entry in catalog.load():
            found = await client.read_deployment_by_name(entry.deployment)
            assert found.work_pool_name == POOL
            # Nothing overridden: each run's Job is the pool's, with the flows image.
            assert not found.job_variables
            assert found.entrypoint is not None
            assert found.entrypoint.startswith("flows.")
