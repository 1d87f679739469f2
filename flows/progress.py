"""How far a flow run has got, for whoever shows it (``switchboard flows run``'s bar).

A flow announces its steps with :func:`plan` and starts each with :func:`step`; both do
nothing unless a reporter was installed with :func:`reporting_to`, so a served or
scheduled run pays nothing for them. The reporter travels in a ContextVar, which the flow
and its tasks (awaited on the caller's loop) see.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator


class ProgressReporter(Protocol):
    def plan(self, total: int) -> None:
        """The run has ``total`` steps."""

    def step(self, description: str) -> None:
        """The previous step is done; ``description`` is what happens now."""


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
