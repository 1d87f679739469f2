"""The values a notebook computed, kept as JSON for whoever ran it.

A notebook run headless (papermill, a scheduled job, the test suite) is given
``record_path``; each value the notebook records is written there at once (atomically: a
temporary file renamed into place), so a reader gets what was computed even from a run
that failed further down. Without a path nothing is written and recording costs nothing::

    record = NotebookRecord(record_path or None)
    record["turns"] = len(result.turns)

Values are converted as msgspec converts them (Structs, UUIDs and times become JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import os


class NotebookRecord:
    """Named values of one notebook run, written to ``path`` as each one is recorded."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self.values: dict[str, Any] = {}

    def __setitem__(self, name: str, value: Any) -> None:
        self.values[name] = msgspec.to_builtins(value)
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_bytes(msgspec.json.format(msgspec.json.encode(self.values), indent=2))
        temporary.replace(self.path)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @staticmethod
    def read(path: str | os.PathLike[str]) -> dict[str, Any]:
        """What a run recorded at ``path``."""
        values: dict[str, Any] = msgspec.json.decode(Path(path).read_bytes())
        return values
