"""The notebooks are committed as sources: no outputs, no execution counts, and the first
code cell holds the parameters (papermill's ``parameters`` tag)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tests.notebooks.conftest import NOTEBOOKS

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
