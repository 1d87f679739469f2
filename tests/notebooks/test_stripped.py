"""The notebooks are committed as sources: no outputs, no execution counts, and the first
code cell holds the parameters (papermill's ``parameters`` tag)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.conftest import NOTEBOOKS
from tests.support import process
from tests.support.process import REPO_ROOT

PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_here() -> None:
    assert [p.name for p in PATHS] == [
        "compare_eval_runs.ipynb",
        "replay_conversation.ipynb",
        "usage_overview.ipynb",
    ]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    dirty = [
        index for index, cell in enumerate(code) if cell.outputs or cell.execution_count is not None
    ]
    assert not dirty, f"{path.name}: outputs in code cells {dirty}; run nbstripout {path}"
    assert "widgets" not in notebook.metadata
    assert code[0].metadata.get("tags") == ["parameters"]
    assert "record_path" in code[0].source


def test_the_headless_example_makes_out_and_git_ignores_what_it_writes() -> None:
    """Executed notebooks hold real conversation text: they go to out/, which the headless
    example in docs/notebooks.md creates before papermill writes there, and which git ignores."""
    page = (REPO_ROOT / "docs/notebooks.md").read_text(encoding="utf-8")
    example = page.split("# Headless:", 1)[1].split("```", 1)[0]
    written = re.findall(r"\bout/[\w.-]+", example)
    assert written
    assert "mkdir -p out" in example
    assert example.index("mkdir -p out") < example.index(written[0])
    for path in written:
        checked = process.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO_ROOT)
        assert checked.returncode == 0, f"{path} is not ignored by git"
