"""A function process starts small and clean: no extras imported, no warnings raised.

Each check runs in a fresh interpreter, since this test process has imported whatever other
tests needed (and the servers the end-to-end tests start are outside pytest's warning filter).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import process

ROOT = Path(__file__).resolve().parent.parent

FUNCTION_MODULES = [
    "functions.gateway",
    "functions.chat.app",
    "functions.configs.app",
    "functions.keys.app",
]
# Prefect belongs to flows/, Jupyter and plotting to notebooks/: never to a function process.
# Heavy packages of the extras, and the simulator (a test double, never on a serving path).
FORBIDDEN_PREFIXES = (
    "prefect",
    "papermill",
    "nbclient",
    "matplotlib",
    "pandas",
    "jupyter",
    "functions.simulator",
)

APPS = ["functions.gateway", "functions.chat.app", "functions.configs.app", "functions.keys.app"]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return process.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def _base_dependency_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        # "piccolo[postgres,sqlite]>=1.38,<2" -> "piccolo"
        name = requirement.split(";")[0]
        for separator in "[<>=!~ ":
            name = name.split(separator)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def test_function_apps_import_no_flow_or_notebook_libraries() -> None:
    code = f"import {', '.join(FUNCTION_MODULES)}, sys; print('\\n'.join(sorted(sys.modules)))"
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert set(FUNCTION_MODULES) <= set(loaded)
    heavy = sorted(
        name for name in loaded if name.split(".")[0].lower().startswith(FORBIDDEN_PREFIXES)
    )
    assert heavy == []


@pytest.mark.parametrize("module", APPS)
def test_function_apps_build_without_warnings(module: str) -> None:
    code = (
        "from functions.core.settings import Settings\n"
        f"from {module} import create_app\n"
        "create_app(Settings())"
    )
    result = _python("-W", "error", "-c", code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("extra_only", ["prefect", "papermill", "matplotlib", "pandas"])
def test_base_dependencies_leave_out_extras(extra_only: str) -> None:
    assert extra_only not in _base_dependency_names()
