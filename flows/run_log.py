"""One log call, two readers: the flow run's log in Prefect (the UI) and structlog.

Inside a flow, ``with run_log() as log:`` binds the flow run's id, name and flow to
structlog's context, so every line logged meanwhile, by the flow or by the core services
it calls, carries them. ``log.info("health.recorded", upstreams=2)`` then writes one
structured line through structlog (stderr, JSON off a TTY) and the same event to the
Prefect API's log of the flow run (or of the task run it is called from).

The Prefect half uses Prefect's own API log handler on a logger that does not propagate,
so the line is not printed a second time by the root logger (which structlog formats).
Named ``run_log`` rather than ``logging`` so nothing here can shadow the standard library.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler

if TYPE_CHECKING:
    from collections.abc import Iterator

PREFECT_LOGGER = "switchboard.flows"


def _prefect_logger() -> logging.Logger:
    """The logger whose records go to the Prefect API only (set up on first use)."""
    logger = logging.getLogger(PREFECT_LOGGER)
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        logger.addHandler(APILogHandler())
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
    return logger


def _as_text(event: str, fields: dict[str, Any]) -> str:
    if not fields:
        return event
    return event + " " + " ".join(f"{key}={value}" for key, value in fields.items())


class RunLog:
    """Logs each event to structlog and to the Prefect run's log alike."""

    def __init__(self, *, to_prefect: bool) -> None:
        self._structlog = structlog.get_logger("flows")
        self._prefect = _prefect_logger() if to_prefect else None

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        self._structlog.log(level, event, **fields)
        if self._prefect is not None:
            self._prefect.log(level, _as_text(event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


@contextmanager
def run_log() -> Iterator[RunLog]:
    """Bind the current flow run to structlog's context; yield a logger writing to both.

    Outside a flow run (a flow's function called directly) only structlog is written.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        yield RunLog(to_prefect=False)
        return
    bound: dict[str, Any] = {
        "flow_run_id": str(context.flow_run.id),
        "flow_run_name": context.flow_run.name,
        "flow": context.flow.name if context.flow is not None else None,
    }
    if context.flow_run.deployment_id is not None:
        bound["deployment_id"] = str(context.flow_run.deployment_id)
    with structlog.contextvars.bound_contextvars(**bound):
        yield RunLog(to_prefect=True)
