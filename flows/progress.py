"""How far a flow run has got, for whoever shows it (``switchboard flows run``'s bar).

A flow announces its steps with :func:`plan` and starts each with :func:`step`, and says how
a long step is going with :func:`status` (for work counted in rows, :func:`rows_counter`:
rows so far and their rate). All do nothing unless a reporter was installed with
:func:`reporting_to`, so a served or scheduled run pays nothing for them. The reporter
travels in a ContextVar, which the flow and its tasks (awaited on the caller's loop) see.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class ProgressReporter(Protocol):
    def plan(self, total: int) -> None:
        """The run has ``total`` steps."""

    def step(self, description: str) -> None:
        """The previous step is done; ``description`` is what happens now."""

    def status(self, description: str) -> None:
        """How the current step is going (it does not advance)."""


_reporter: ContextVar[ProgressReporter | None] = ContextVar("flow_progress", default=None)


@contextmanager
def reporting_to(reporter: ProgressReporter) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def plan(total: int) -> None:
    if (reporter := _reporter.get()) is not None:
        reporter.plan(total)


def step(description: str) -> None:
    if (reporter := _reporter.get()) is not None:
        reporter.step(description)


def status(description: str) -> None:
    if (reporter := _reporter.get()) is not None:
        reporter.status(description)


def rows_counter(label: str) -> Callable[[int], None]:
    """A callback for work counted in rows, called with the rows done so far: shows them
    and their rate since the counter was made (``label: 12,345 rows, 45,678 rows/s``)."""
    started = time.monotonic()

    def count(rows: int) -> None:
        if _reporter.get() is None:
            return
        elapsed = time.monotonic() - started
        rate = rows / elapsed if elapsed > 0 else 0.0
        status(f"{label}: {rows:,} rows, {rate:,.0f} rows/s")

    return count
