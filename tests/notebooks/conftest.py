"""Running the notebooks as a person would, headless: papermill, a kernel from this venv,
PostgreSQL with seeded history, the vLLM simulator.

The kernel is a kernelspec written to a temporary folder (this interpreter, ``-m
ipykernel_launcher``), and every Jupyter, IPython and matplotlib folder points at
temporary ones, so a run touches nothing in the user's home. Each notebook writes the
values it computed to ``record_path`` (``functions.core.notebooks.record``); tests read
them back, and the executed notebook's outputs too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from functions.core.notebooks.record import NotebookRecord
from tests.core.replay.conftest import (  # noqa: F401 - fixtures shared with the replay tests
    chat,
    faults,
    llm,
    pg,
    replay_simulator,
    sim,
)

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "switchboard-test"


@pytest.fixture(scope="session")
def jupyter_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Private Jupyter, IPython and matplotlib folders, with a kernel of this interpreter."""
    home = tmp_path_factory.mktemp("jupyter")
    spec = home / "path" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Switchboard (tests)",
                "language": "python",
            }
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(home / "path"))
        for variable, folder in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("IPYTHONDIR", "ipython"),
            ("MPLCONFIGDIR", "matplotlib"),
        ):
            (home / folder).mkdir()
            patch.setenv(variable, str(home / folder))
        # Jupyter's own folders by platformdirs (its coming default; the old one warns).
        patch.setenv("JUPYTER_PLATFORM_DIRS", "1")
        patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        yield home


@dataclass
class Executed:
    """A notebook run: the executed notebook and what it recorded."""

    notebook: Any
    values: dict[str, Any]
    path: Path

    def outputs(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [
            output
            for cell in self.notebook.cells
            if cell.cell_type == "code"
            for output in cell.get("outputs", [])
        ]
        return [o for o in found if kind is None or o["output_type"] == kind]

    def data(self, mime: str) -> list[str]:
        return [
            o["data"][mime]
            for o in self.outputs()
            if o["output_type"] in ("display_data", "execute_result") and mime in o["data"]
        ]


async def execute(
    name: str, tmp_path: Path, jupyter_home: Path, llm_url: str | None = None, **parameters: Any
) -> Executed:
    """Run ``notebooks/<name>.ipynb`` top to bottom with ``parameters`` in a fresh kernel
    (in a thread: papermill runs its own event loop)."""
    record = tmp_path / f"{name}.json"
    out = tmp_path / f"{name}.executed.ipynb"
    with pytest.MonkeyPatch.context() as patch:
        # What the kernel reads as every Switchboard process does; the cwd has no .env.
        for variable in [v for v in os.environ if v.startswith("SWITCHBOARD_")]:
            patch.delenv(variable)
        if llm_url is not None:
            patch.setenv("SWITCHBOARD_LLM_URLS", llm_url)
        await asyncio.to_thread(
            _papermill,
            str(NOTEBOOKS / f"{name}.ipynb"),
            str(out),
            parameters={**parameters, "record_path": str(record)},
            kernel_name=KERNEL,
            cwd=str(tmp_path),
            progress_bar=False,
            log_output=False,
            execution_timeout=60,
        )
    notebook = nbformat.read(out, as_version=4)
    return Executed(notebook=notebook, values=NotebookRecord.read(record), path=out)


def render_html(run: Executed) -> str:
    """The executed notebook as the README renders it: HTML with the offline template."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="offline", extra_template_basedirs=[str(NOTEBOOKS / "templates")]
    )
    body, _ = exporter.from_notebook_node(run.notebook)
    html_path = run.path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return body


def _papermill(*args: Any, **kwargs: Any) -> None:
    """papermill in this thread; then the event loop it made for the thread is closed (it
    leaves it open, and an open loop's sockets are a ResourceWarning when collected)."""
    try:
        papermill.execute_notebook(*args, **kwargs)
    finally:
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            loop = None
        if loop is not None and not loop.is_running():
            loop.close()
        policy.set_event_loop(None)


def assert_clean_run(run: Executed) -> None:
    """Every cell ran, nothing raised, no warning was printed, and charts were drawn."""
    code = [cell for cell in run.notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not run.outputs("error")
    stderr = "".join(o["text"] for o in run.outputs("stream") if o["name"] == "stderr")
    assert "Warning" not in stderr, stderr
    assert run.data("image/png"), "no chart was drawn"
