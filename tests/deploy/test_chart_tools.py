"""The chart as the real tools see it: Helm's linter, Kubernetes 1.33's schemas, the policy
linter (checkov), and the flow runs' Job as prefect-kubernetes makes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import VALUE_SETS, Objects, chart_tools, of_kind, tool
from tests.support import process
from tests.support.process import REPO_ROOT

# Kinds Kubernetes itself has no schema for (custom resources): kubernetes-validate cannot
# check them; docs/kubernetes.md says so, and tests/deploy/test_chart_sources.py reads them.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
# What Helm's linter may still say: information, not a warning (it has no icon to show).
CHECKOV_OPTIONS = ("--framework", "kubernetes", "--output", "json", "--quiet", "--skip-download")
HELM_INFO = {("Chart.yaml", "icon is recommended")}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes_strictly(name: str) -> None:
    path = VALUE_SETS[name]
    report = tool("lint", *([str(path)] if path else []))
    assert report["errors"] == []
    assert report["total_charts_linted"] == 1
    said = {(message["path"], message["error"]) for message in report["messages"]}
    assert said <= HELM_INFO, said
    # Severity 1 is information; 2 a warning, 3 an error (strict fails on either).
    assert all(message["severity"] <= 1 for message in report["messages"])


def test_every_rendered_object_is_valid_for_kubernetes_1_33(rendered: dict[str, Objects]) -> None:
    assert chart_tools.KUBERNETES.startswith("1.33.")
    everything = [each for objects in rendered.values() for each in objects]
    results = tool("validate", stdin=json.dumps(everything))
    assert len(results) == len(everything)
    errors = [result for result in results if result["error"]]
    assert errors == []
    unchecked = {result["kind"] for result in results if not result["schema"]}
    assert unchecked <= CUSTOM_KINDS
    # Each custom kind is rendered by some value set, so the sources test reads it.
    assert {each["kind"] for each in everything} >= CUSTOM_KINDS


def test_the_policy_linter_has_no_finding_left(
    rendered: dict[str, Objects], tmp_path: Path
) -> None:
    """checkov over every value set's objects: nothing fails, and every check it skips is
    skipped by an annotation in the chart that gives a reason."""
    for name, objects in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(objects))
    python = chart_tools.tools_dir() / "bin" / "python"
    result = process.run(
        [str(python), "-m", "checkov.main", "--directory", str(tmp_path), *CHECKOV_OPTIONS],
        capture_output=True,
        text=True,
        timeout=process.scaled(300),
        check=False,
    )
    report: Any = json.loads(result.stdout)
    report = report if isinstance(report, list) else [report]
    failed = [
        (check["check_id"], check["resource"], check["check_name"])
        for each in report
        for check in each.get("results", {}).get("failed_checks", [])
    ]
    assert failed == [], result.stderr
    assert result.returncode == 0, result.stderr
    assert sum(each["summary"]["passed"] for each in report) > 1000
    for objects in rendered.values():
        for each in objects:
            for key, value in each["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert check.startswith("CKV_K8S_"), value
                    assert len(reason.split()) >= 8, f"{each['metadata']['name']}: {value}"


def test_a_flow_run_job_from_the_work_pool_is_a_valid_job(rendered: dict[str, Objects]) -> None:
    """The work pool's base job template, through the Kubernetes worker's own code, makes a
    Job as hardened as the chart's pods and with the chart's settings; Kubernetes' schema
    accepts it but for the two fields prefect-kubernetes insists on in the pod's spec
    (the API server drops them, saying so)."""
    [pool] = [
        each
        for each in of_kind(rendered["vllm-production-stack"], "ConfigMap").values()
        if "base-job-template.json" in each.get("data", {})
    ]
    job = tool("flow-run-job", stdin=pool["data"]["base-job-template.json"])
    [result] = tool("validate", stdin=json.dumps([job]))
    assert result["error"] == (
        "spec/template/spec: Additional properties are not allowed "
        "('completions', 'parallelism' were unexpected)"
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"].startswith("registry.example.com/switchboard-flows:")
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    env = {each["name"]: each for each in container["env"]}
    assert env["SWITCHBOARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    assert "PREFECT__FLOW_RUN_ID" in env
    assert job["metadata"]["namespace"] == chart_tools.NAMESPACE
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "flow-run"
    assert labels["app.kubernetes.io/instance"] == chart_tools.RELEASE


def test_the_flows_image_has_the_kubernetes_worker_the_tools_check() -> None:
    """The flows image installs the kubernetes extra (the worker of flows.mode workPool),
    and the prefect-kubernetes the tests above ran is one that extra admits."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    [wanted] = [Requirement(r) for r in project["optional-dependencies"]["kubernetes"]]
    pinned = {Requirement(line).name: Requirement(line) for line in chart_tools.pins()}
    [version] = [spec.version for spec in pinned[wanted.name].specifier]
    assert wanted.specifier.contains(version)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert '".[flows,kubernetes]"' in dockerfile


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ("databse:\n  existingSecret: x\n", "additional properties 'databse' not allowed"),
        ("flows:\n  mode: served\n", "flows/mode"),
        (
            "settings:\n  SWITCHBOARD_LOG_LEVEL: DEBUG\n",
            "invalid propertyName 'SWITCHBOARD_LOG_LEVEL'",
        ),
        ("llm:\n  urls: []\n", "llm/urls"),
    ],
)
def test_values_the_chart_cannot_mean_are_refused_by_its_schema(
    values: str, refusal: str, tmp_path: Path
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    report = tool("lint", str(path))
    assert any(refusal in error for error in report["errors"]), report
