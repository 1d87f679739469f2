"""The Helm chart (deploy/helm/switchboard), rendered and checked without a cluster.

Helm's SDK, Kubernetes' schemas, checkov and prefect-kubernetes run in the chart tools'
own virtual environment (deploy/helm/tools.py; ``make chart-tools`` makes it once per
machine and pin set, ``make test`` first): each is called here as a subprocess with that
environment's Python, and what it says comes back as JSON. A missing environment fails,
naming the command that makes it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import process
from tests.support.process import REPO_ROOT

HELM = REPO_ROOT / "deploy" / "helm"
CHART = HELM / "switchboard"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
# The default values, then every example values file: each is linted, rendered, validated.
VALUE_SETS = {"default": None, **{path.stem: path for path in EXAMPLES}}

_spec = importlib.util.spec_from_file_location("chart_tools", HELM / "tools.py")
assert _spec is not None
assert _spec.loader is not None
chart_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chart_tools)

Objects = list[dict[str, Any]]


def tools_python() -> str:
    where = chart_tools.tools_dir()
    if not (where / ".installed").exists():
        pytest.fail(f"the chart tools are not installed at {where}: run `make chart-tools`")
    return str(where / "bin" / "python")


def tool(command: str, *args: str, stdin: str | None = None) -> Any:
    """``tools.py COMMAND ARGS`` in the tools' environment; its JSON answer."""
    result = process.run(
        [tools_python(), str(HELM / "tools.py"), command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=process.scaled(300),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def render(values: Path | None) -> Objects:
    objects: Objects = tool("template", *([str(values)] if values else []))
    return objects


@pytest.fixture(scope="session")
def rendered() -> dict[str, Objects]:
    """Every value set's objects, as ``helm template`` renders an install."""
    return {name: render(path) for name, path in VALUE_SETS.items()}


def of_kind(objects: Objects, kind: str) -> dict[str, dict[str, Any]]:
    return {each["metadata"]["name"]: each for each in objects if each["kind"] == kind}


def component(each: dict[str, Any]) -> str | None:
    labels: dict[str, str] = each["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def values_of(name: str) -> dict[str, Any]:
    """A value set merged over values.yaml, as the chart sees it (for expectations)."""
    import yaml

    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    path = VALUE_SETS[name]
    if path is not None:
        merged = chart_tools._merge(merged, yaml.safe_load(path.read_text()))
    return merged
