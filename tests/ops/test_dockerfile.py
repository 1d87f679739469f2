"""The Dockerfile: hadolint (from PyPI) finds nothing; its stages are the ones compose
builds, non-root, without dev dependencies; its healthcheck command works on a live
function. (Building the image needs a Docker engine, which this machine has not.)"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys

from tests.ops.conftest import Stack
from tests.ops.tools import REPO, run, venv_tool

DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("FROM "):
            name = line.split(" AS ")[-1] if " AS " in line else line
            current = found.setdefault(name, [line])
        elif line and not line.startswith("#") and found:
            current.append(line)
    return found


def chain(name: str) -> list[str]:
    """The instructions of a stage and of the stages it is built FROM."""
    all_stages = stages()
    base = all_stages[name][0].split()[1]
    return (chain(base) if base in all_stages else []) + all_stages[name]


def test_hadolint_finds_nothing() -> None:
    result = run([venv_tool("hadolint"), "--format", "json", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout) == []


def test_the_targets_compose_builds_are_small_and_run_as_a_user() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    for target in set(re.findall(r"target: (\w+)", compose)):
        instructions = chain(target)
        user = [i for i in instructions if i.startswith("USER ")]
        assert user, target
        assert not user[-1].split()[1].startswith(("0", "root")), target
        assert any(i.startswith("HEALTHCHECK ") for i in instructions), target
        # Only the build stage's virtual environment is copied in: no compiler, no source.
        copies = [i for i in instructions if i.startswith("COPY ")]
        assert copies, target
        assert all("--from=build" in i for i in copies), target
    installs = " ".join(i for stage in stages().values() for i in stage if "pip install" in i)
    assert not re.search(r"[\[,]dev[\],]", installs), installs


def test_the_build_context_holds_what_the_build_copies() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for instruction in stages()["build"]:
        if instruction.startswith("COPY "):
            for source in instruction.split()[1:-1]:
                assert any(fnmatch.fnmatch(source, p) for p in allowed), source
    assert "*" in patterns  # everything else (.env, .git, .venv, databases) stays out


def test_the_healthcheck_command_checks_a_live_function(stack: Stack) -> None:
    check = next(i for i in stages()["functions"] if i.startswith("HEALTHCHECK "))
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[0] == "python"
    chat = stack.functions["chat"]
    env = {**os.environ, "SWITCHBOARD_PORT": str(chat.port)}
    assert run([sys.executable, *command[1:]], env=env).returncode == 0
    env["SWITCHBOARD_PORT"] = "9"  # nothing listens there
    assert run([sys.executable, *command[1:]], env=env).returncode != 0
