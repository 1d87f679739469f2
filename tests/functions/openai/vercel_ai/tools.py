"""The Vercel AI SDK for the door's test: Node from Debian and the pinned npm packages.

With any Python 3 (Makefile, CI):

    python3 tests/functions/openai/vercel_ai/tools.py install   Node if missing, then the
                                                                packages, once per lockfile

The packages (``package.json``, pinned exactly in ``package-lock.json``) are installed
with ``npm ci`` from the npm registry into a directory outside the repository,
``~/.cache/switchboard/vercel-ai-<hash of the lockfile>`` (or under ``$XDG_CACHE_HOME``):
a new pin makes a new directory, the same pins reuse it, so CI on one machine (or with that
directory cached) installs once and a test run afterwards only checks that it exists.
Node itself is Debian's ``nodejs`` and ``npm`` packages, installed with apt when absent,
as the Makefile installs its other tools.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "package-lock.json"
MANIFEST = HERE / "package.json"
SCRIPT = HERE / "three_turns.mjs"
MARK = ".installed"


def modules_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "switchboard"
    digest = hashlib.sha256(MANIFEST.read_bytes() + LOCK.read_bytes()).hexdigest()[:12]
    return cache / f"vercel-ai-{digest}"


def ensure_node() -> None:
    """Node and npm on PATH: Debian's packages, installed with apt when missing."""
    if shutil.which("node") and shutil.which("npm"):
        return
    apt = ["apt-get", "install", "-y", "--no-install-recommends", "nodejs", "npm"]
    if os.geteuid() != 0:
        apt = ["sudo", "-n", *apt]
    subprocess.run(apt, check=True)


def install() -> tuple[Path, float]:
    """The installed packages' directory, and how long installing took (0 when cached).

    Installed into a fresh directory beside the target and renamed into place, so two
    processes installing at once both end with one whole directory."""
    target = modules_dir()
    if (target / MARK).exists():
        return target, 0.0
    ensure_node()
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        shutil.copy(MANIFEST, work / MANIFEST.name)
        shutil.copy(LOCK, work / LOCK.name)
        npm = shutil.which("npm")
        assert npm is not None
        subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=600,
        )
        (work / MARK).touch()
        try:
            work.rename(target)
        except OSError:
            if not (target / MARK).exists():  # another process got there first otherwise
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, time.perf_counter() - started


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit(__doc__)
    where, seconds = install()
    print(f"vercel-ai: {where} ({'cached' if not seconds else f'installed in {seconds:.1f}s'})")
