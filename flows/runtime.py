"""Every flow's prologue in one call: settings, metrics, the run's log, the core runtime.

::

    async with flow_runtime("export", steps=1, use_llm=False) as rt:
        progress.step("exporting")
        result = await export_task(request)
        rt.log.info("export.done", messages=result.messages)

loads the settings once, measures the block as one run of the flow for Prometheus
(``functions.core.flow_metrics``: a failure or cancellation is pushed as a failure and
raised unchanged), binds the flow run to the log (``flows.run_log``), plans the progress
bar (opening the runtime is its first step, then the flow's ``steps``) and opens the same
core runtime every function process, the CLI and notebooks open
(``functions.core.runtime.open_runtime``), closing it when the block ends.

What must be refused before anything is opened (a bad dataset, a destination carrying a
secret) goes in ``prepare``: it is called with the settings inside the measured run, before
the database is opened, and what it returns is ``rt.prepared``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from flows import progress
from flows.run_log import RunLog, run_log
from functions.core.flow_metrics import FlowRun, report_flow_run
from functions.core.runtime import Runtime, open_runtime
from functions.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

T = TypeVar("T")


class FlowRuntime(Generic[T]):
    """What a flow's body works with: the settings, its log, its metrics and the runtime."""

    def __init__(
        self, settings: Settings, log: RunLog, run: FlowRun, runtime: Runtime, prepared: T
    ) -> None:
        self.settings = settings
        self.log = log
        # Count what the run handled (rt.run.add("rows", n)): pushed with how it ended.
        self.run = run
        self.runtime = runtime
        self.prepared = prepared


@overload
def flow_runtime(
    flow: str, *, steps: int, use_llm: bool = True, prepare: None = None
) -> AbstractAsyncContextManager[FlowRuntime[None]]: ...


@overload
def flow_runtime(
    flow: str, *, steps: int, use_llm: bool = True, prepare: Callable[[Settings], T]
) -> AbstractAsyncContextManager[FlowRuntime[T]]: ...


def flow_runtime(
    flow: str,
    *,
    steps: int,
    use_llm: bool = True,
    prepare: Callable[[Settings], Any] | None = None,
) -> AbstractAsyncContextManager[FlowRuntime[Any]]:
    """Open what the flow ``flow`` (its metrics name) needs; see the module docstring.

    ``steps`` is how many progress steps the flow announces itself (it may plan again once
    it knows better); ``use_llm`` also opens the LLM client (and the process's lease).
    """
    return _flow_runtime(flow, steps=steps, use_llm=use_llm, prepare=prepare)


@asynccontextmanager
async def _flow_runtime(
    flow: str, *, steps: int, use_llm: bool, prepare: Callable[[Settings], Any] | None
) -> AsyncIterator[FlowRuntime[Any]]:
    settings = load_settings()
    async with report_flow_run(settings, flow) as measured:
        prepared = None if prepare is None else prepare(settings)
        progress.plan(1 + steps)
        with run_log() as log:
            progress.step("opening the database" + (" and the LLM client" if use_llm else ""))
            async with open_runtime(settings, use_llm=use_llm) as runtime:
                yield FlowRuntime(settings, log, measured, runtime, prepared)
