"""What handlers and probes read from ``app.state``: the settings and the open runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.datastructures import State

    from functions.core.runtime import Runtime
    from functions.core.settings import Settings


def settings_of(state: State) -> Settings:
    settings: Settings = state["settings"]
    return settings


def runtime_of(state: State) -> Runtime:
    runtime: Runtime = state["runtime"]
    return runtime
