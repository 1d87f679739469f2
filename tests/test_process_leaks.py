"""A process that outlives the tests fails the session, named, and is killed.

An inner pytest session (in a process of its own, with this suite's ``tests/conftest.py``
as a plugin) runs a test that leaves two processes behind: a child it started by hand, and
an orphan (its parent exited) in a session the helper started. Both must be found, named in the
output, killed, and the session must fail, in one process and under pytest-xdist.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.support import process
from tests.support.process import REPO_ROOT

LEAKY_TEST = """
import subprocess
import sys

from tests.support import process

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)", "{marker}"]

def test_leaves_processes_behind():
    # A child, started by hand and never stopped.
    subprocess.Popen(SLEEP, start_new_session=True)
    # An orphan: started through the helper by a shell that exits at once.
    process.start(["sh", "-c", '"$@" &', "sh", *SLEEP]).wait()
"""


def _sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for candidate in psutil.process_iter(["cmdline", "status"]):
        if marker in (candidate.info["cmdline"] or []) and (
            candidate.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(candidate)
    return found


# "1": one xdist worker is enough to take the worker's path (its own check, its reason to stop).
@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_leaked_process_fails_the_session_and_is_killed(tmp_path: Path, workers: str) -> None:
    marker = f"leak-{uuid.uuid4().hex}"
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST.format(marker=marker))
    try:
        result = process.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "tests.conftest",
                "-p",
                "no:cacheprovider",
                "-n",
                workers,
                "--rootdir",
                str(tmp_path),
                "-c",
                "/dev/null",
                str(tmp_path / "test_leaky.py"),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=process.scaled(120),
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "1 passed" in output, output  # the test itself passed: the leak failed it
        assert "processes outlived the tests" in output, output
        assert output.count(marker) >= 2, output  # both named, the orphan too
        assert _sleepers(marker) == [], "the leaked processes were not killed"
    finally:
        for sleeper in _sleepers(marker):
            sleeper.kill()


TIMED_OUT_TEST = """
import subprocess
import sys
import time

import pytest

from tests.support import process

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)", "{marker}"]


@pytest.fixture
def server():
    # A service and the child it started, in one group: the fixture stops them both.
    started = process.start(["sh", "-c", '"$@" & "$@"', "sh", *SLEEP])
    yield started
    process.stop(started)


@pytest.mark.timeout(3)
def test_hangs(server):
    time.sleep(600)
"""


def test_a_test_that_times_out_still_stops_what_its_fixtures_started(tmp_path: Path) -> None:
    """pytest-timeout as configured here (SIGALRM) fails the test and lets teardown run:
    the fixture's group goes, grandchild included, and nothing is left to report."""
    marker = f"timeout-{uuid.uuid4().hex}"
    (tmp_path / "test_hangs.py").write_text(TIMED_OUT_TEST.format(marker=marker))
    try:
        result = process.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "tests.conftest",
                "-p",
                "no:cacheprovider",
                "-n",
                "0",
                "-c",
                str(REPO_ROOT / "pyproject.toml"),
                "--rootdir",
                str(REPO_ROOT),
                str(tmp_path / "test_hangs.py"),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=process.scaled(120),
        )
        output = result.stdout + result.stderr
        assert "1 failed" in output, output
        assert "Timeout" in output, output
        assert "processes outlived" not in output, output
        assert _sleepers(marker) == [], "the fixture's processes outlived the timed-out test"
    finally:
        for sleeper in _sleepers(marker):
            sleeper.kill()
