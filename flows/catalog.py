"""The flows as ``switchboard flows`` shows them, read without importing Prefect.

Importing Prefect takes seconds (10 to 13 on a busy machine), so ``flows --help``,
``flows list`` and ``flows run NAME --help`` read ``catalog.json`` beside this module
instead: each flow's name, deployment, tags, schedule, description and parameters (the
JSON schema Prefect derives from the flow's signature and docstring, which the Prefect
UI's form shows too). Prefect is imported only when a flow runs, or is served or deployed.

``catalog.json`` is generated from the flows themselves (``flows.deployments.SCHEDULED``):
after changing a flow's parameters or its deployment, run ``python -m flows.catalog``.
``tests/flows/test_cli.py`` fails while the file differs from what the flows say.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from functions.core.settings import Settings

CATALOG_FILE = Path(__file__).with_name("catalog.json")


def interval_s(settings: Settings, setting: str | None, every_s: float | None) -> float | None:
    """How often a deployment runs, in seconds: its ``SWITCHBOARD_*`` setting if it has
    one, else its fixed interval; ``None``: on demand only."""
    if setting is not None:
        return float(getattr(settings, setting))
    return every_s


class CatalogFlow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One flow and its deployment, as the command line needs them."""

    name: str
    deployment: str
    entrypoint: str
    tags: tuple[str, ...]
    # The Settings field holding the interval in seconds, or None (then ``every_s``).
    setting: str | None
    every_s: float | None
    description: str
    # The flow's parameters: Prefect's JSON schema of each, in the signature's order.
    parameters: dict[str, dict[str, Any]]
    required: tuple[str, ...]

    def interval_s(self, settings: Settings) -> float | None:
        return interval_s(settings, self.setting, self.every_s)


def load() -> tuple[CatalogFlow, ...]:
    """Every flow, from ``catalog.json`` (no Prefect)."""
    return msgspec.json.decode(CATALOG_FILE.read_bytes(), type=tuple[CatalogFlow, ...])


def find(name: str) -> CatalogFlow | None:
    return next((flow for flow in load() if flow.name == name), None)


def generate() -> bytes:
    """``catalog.json`` as the flows say it should be (imports Prefect and every flow)."""
    from flows.deployments import SCHEDULED

    flows = []
    for scheduled in SCHEDULED:
        schema = scheduled.flow.parameters.model_dump(mode="json")
        flows.append(
            CatalogFlow(
                name=scheduled.name,
                deployment=scheduled.deployment_name,
                entrypoint=f"{scheduled.flow.fn.__module__}:{scheduled.flow.fn.__name__}",
                tags=scheduled.tags,
                setting=scheduled.setting,
                every_s=None if scheduled.every is None else scheduled.every.total_seconds(),
                description=scheduled.description,
                parameters=schema["properties"],
                required=tuple(schema.get("required") or ()),
            )
        )
    return msgspec.json.format(msgspec.json.encode(flows), indent=2) + b"\n"


if __name__ == "__main__":
    CATALOG_FILE.write_bytes(generate())
    sys.stdout.write(f"wrote {CATALOG_FILE}\n")
