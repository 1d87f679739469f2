"""The evaluation flow: a dataset through one or more configurations, scored and compared.

Thin over ``functions.core.evals``: read and check the dataset (nothing runs until every
line is valid), create the run or take up the one named by ``run_id`` (a resume sends only
the items without a result), send every item through the one send path with bounded
concurrency, retries and a per-item timeout, then report: per configuration the mean score
and pass rate with 95% bootstrap intervals, latency, tokens and errors; each other
configuration against the first on the same items, with a paired test per scorer.

The report is stored with the run (``switchboard evals show RUN``), published as Prefect
artifacts (a Markdown summary and a table) and returned (``switchboard flows run evaluate``
prints it). Progress: a bar in a terminal, a progress artifact in the Prefect UI.

Honest endings: a configuration whose model no upstream serves stops the flow before a run
is created (naming the served models); a run in which some configuration answered no
item is stored as ``failed``, its report published all the same, and the flow fails
(``flows run`` exits non-zero).

One task sends every item, not a task per item. ``bench/bench_evaluate.py`` (1,000 items
at concurrency 32 against the simulator, 2 cores) measured this process's CPU per item:
0.6 ms for the bare LLM client call, 2.4 ms through the core runner (the stored exchange,
scoring, the result row), 3.6 ms for this flow, and 9.3 ms with a Prefect task per item,
which also halved throughput (45 against 82 items/s). The run's own rows in
``eval_result`` make it resumable; Prefect's task states would add nothing but cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from prefect import flow, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows import progress
from flows.runtime import flow_runtime
from functions.core.errors import InvalidInputError, SwitchboardError
from functions.core.evals import runner, service
from functions.core.evals.datasets import Dataset, load_dataset
from functions.core.evals.report import RunReport
from functions.core.evals.runner import Evaluator, RunCounts, RunOptions, start_run
from functions.core.evals.schemas import EvalResultOut, EvalRunOut, ScorerSpec

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

    from flows.run_log import RunLog
    from functions.core.chat.service import ChatService
    from functions.core.llm.client import LLMClient
    from functions.core.settings import Settings

NAME = "evaluate"
ARTIFACT_KEY = "evaluation"
DATABASE_RETRIES = 2
DATABASE_RETRY_DELAYS_S: list[float] = [1.0, 5.0]
DATABASE_TIMEOUT_S = 60
# The Prefect UI's progress artifact is updated at most this often (an API call each).
PROGRESS_EVERY_S = 1.0

Concurrency = Annotated[int, Field(ge=1, le=256)]
Retries = Annotated[int, Field(ge=0, le=20)]
Timeout = Annotated[float, Field(gt=0, le=86_400)]


class EvaluationFailedError(SwitchboardError):
    """The run ended, but some configuration answered no item: nothing to compare."""

    code = "evaluation_failed"


async def _worth_retrying(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A database hiccup is worth another attempt; a refusal (an unknown configuration, a
    model nobody serves, a dataset changed under a resume) would only come again, later."""
    failure = await state.aresult(raise_on_failure=False)
    return not (isinstance(failure, SwitchboardError) and failure.status_code < 500)


class EvaluationReport(msgspec.Struct, kw_only=True):
    """What one run of the flow did, and the run's report."""

    run_id: str
    resumed: bool
    counts: RunCounts
    report: RunReport

    def summary(self) -> list[str]:
        """For a terminal: what was sent, then the report."""
        c = self.counts
        how = "resumed" if self.resumed else "started"
        lines = [
            f"{how} run {self.run_id}: sent {c.sent} of {c.total} (already done {c.already_done}), "
            f"{c.errors} error(s), {c.retries} retried attempt(s)"
        ]
        return lines + self.report.summary() + [f"switchboard evals show {self.run_id}"]


def parse_scorers(texts: list[str] | None) -> list[ScorerSpec]:
    """Run-level scorers: each a JSON object (``{"type": "regex", "pattern": "..."}``) or a
    bare type that needs no parameters (``exact_match``, ``json_valid``, ``similarity``)."""
    specs: list[ScorerSpec] = []
    for index, text in enumerate(texts or []):
        raw: Any = text.strip()
        try:
            raw = msgspec.json.decode(raw) if raw.startswith("{") else {"type": raw}
            specs.append(msgspec.convert(raw, ScorerSpec))  # type: ignore[arg-type]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidInputError(
                f"scorer {index + 1} ({text!r}): {exc}", details={"field": "scorer"}
            ) from None
    return specs


@task(
    name="prepare-run",
    description="Check the dataset and scorers; create the run or take up the one to resume.",
    retries=DATABASE_RETRIES,
    retry_delay_seconds=DATABASE_RETRY_DELAYS_S,
    retry_condition_fn=_worth_retrying,
    timeout_seconds=DATABASE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def prepare_run(
    dataset: Dataset,
    *,
    llm: LLMClient,
    configs: list[str],
    scorers: list[ScorerSpec],
    options: RunOptions,
    owner: str | None,
    name: str,
    run_id: uuid.UUID | None,
) -> EvalRunOut:
    return await start_run(
        dataset,
        llm=llm,
        configs_named=configs,
        scorers=scorers,
        options=options,
        owner=await service.evaluation_owner(owner),
        name=name,
        run_id=run_id,
    )


class _Progress:
    """Each recorded item: a step of the terminal's bar, and now and then the UI's artifact."""

    def __init__(self, artifact_id: uuid.UUID | None) -> None:
        self._artifact_id = artifact_id
        self._shown_at = 0.0
        self.pending: tuple[int, int] | None = None

    def __call__(self, result: EvalResultOut, done: int, total: int) -> None:
        failed = f" ({result.error_code})" if result.error_code else ""
        progress.step(f"{result.item_id} under {result.config}{failed}")
        self.pending = (done, total)

    async def publish(self, *, force: bool = False) -> None:
        if self._artifact_id is None or self.pending is None:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < PROGRESS_EVERY_S:
            return
        self._shown_at = now
        done, total = self.pending
        await aupdate_progress_artifact(
            self._artifact_id,
            progress=100.0 * done / max(total, 1),
            description=f"{done} of {total} item-configurations evaluated",
        )


@task(
    name="evaluate-items",
    description="Send every item without a result through each configuration, score it, "
    "record it; bounded concurrency, retries with backoff, a per-item timeout.",
    retries=0,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def evaluate_items(
    chat: ChatService, run: EvalRunOut, dataset: Dataset, artifact_id: uuid.UUID | None
) -> RunCounts:
    """Every pending item of the run (not retried as a whole: a rerun resumes it)."""
    shown = _Progress(artifact_id)
    evaluator = Evaluator(chat, run, dataset, on_result=shown)

    finished = asyncio.Event()

    async def publish_now_and_then() -> None:
        # Never cancelled mid-call: an API request cut short would leak its connection.
        while not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), PROGRESS_EVERY_S)
            await shown.publish()

    publisher = asyncio.create_task(publish_now_and_then())
    try:
        counts = await evaluator.evaluate()
    finally:
        finished.set()
        await publisher
    await shown.publish(force=True)
    return counts


@task(
    name="report",
    description="Statistics per configuration and paired comparisons; stored with the run.",
    retries=DATABASE_RETRIES,
    retry_delay_seconds=DATABASE_RETRY_DELAYS_S,
    timeout_seconds=DATABASE_TIMEOUT_S,
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def report_run(run_id: uuid.UUID) -> RunReport:
    return await runner.conclude(run_id)


async def _publish(report: RunReport, log: RunLog) -> None:
    await acreate_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=report.markdown(),
        description=f"Evaluation run {report.run_id}: configurations and comparisons.",
    )
    await acreate_table_artifact(
        key=f"{ARTIFACT_KEY}-scores",
        table=report.table(),
        description=f"Evaluation run {report.run_id}: one row per configuration and scorer.",
    )
    for comparison in report.comparisons:
        log.info("eval.compared", headline=comparison.headline(), overall=comparison.overall)


@flow(
    name=NAME,
    description="Run a dataset through one or more configurations, score every output and "
    "compare the configurations with confidence intervals; a rerun with the same run id "
    "resumes it.",
    retries=0,
    persist_result=False,
    log_prints=False,
)
async def evaluate(
    dataset: str,
    config: list[str],
    *,
    scorer: list[str] | None = None,
    run_id: str | None = None,
    concurrency: Concurrency = 8,
    retries: Retries = 3,
    item_timeout_s: Timeout = 300.0,
    owner: str | None = None,
    name: str = "",
    retry_failed: bool = False,
) -> EvaluationReport:
    """Evaluate configurations on a dataset (see the module docstring).

    Args:
        dataset: A JSONL file: one item per line (id, messages or prompt, expected,
            scorers, metadata).
        config: The configurations, as NAME or NAME@VERSION; the first is the baseline.
        scorer: Scorers for every item besides the items' own: a JSON object or a bare type
            (exact_match, json_valid, similarity).
        run_id: Resume this run (only items without a result are sent), or start a new
            run with this id.
        concurrency: Items in flight at once.
        retries: Further attempts at an item after a transient upstream failure.
        item_timeout_s: Each attempt at an item gives up after this many seconds.
        owner: The API key (id or name) owning the run's conversations; empty: the
            evaluations key.
        name: A label for the run.
        retry_failed: With run_id: also send again the items whose attempt failed (an
            upstream error or a timeout, after their retries), not only those without a
            result.
    """

    def prepare(settings: Settings) -> tuple[Dataset, list[ScorerSpec], uuid.UUID | None]:
        # Every bad line named before anything is opened; a turn as long as a send's.
        data = load_dataset(dataset, max_message_chars=settings.max_message_chars)
        specs = parse_scorers(scorer)
        wanted = uuid.UUID(run_id) if run_id else None
        if retry_failed and wanted is None:
            raise ValueError("retry_failed resumes a run: give the run_id of the run to retry")
        return data, specs, wanted

    async with flow_runtime(NAME, steps=2, prepare=prepare) as rt:
        data, specs, wanted = rt.prepared
        progress.step(f"checking {len(data.items)} item(s) and the configurations")
        prepared = await prepare_run(
            data,
            llm=rt.runtime.require_llm(),
            configs=config,
            scorers=specs,
            options=RunOptions(
                concurrency=concurrency, retries=retries, item_timeout_s=item_timeout_s
            ),
            owner=owner,
            name=name,
            run_id=wanted,
        )
        taken = await runner.take_up(
            prepared, rt.runtime.exchanges.lease, retry_failed=retry_failed
        )
        run = taken.run
        if retry_failed:
            rt.log.info("eval.retrying_failed", run_id=str(run.id), items=taken.forgotten)
        rt.log.info(
            "eval.run",
            run_id=str(run.id),
            configs=[target.label for target in run.configs],
            items=run.items,
            already_done=run.results,
        )
        total = run.items * len(run.configs)
        progress.plan(total - run.results + 1)
        artifact_id = await acreate_progress_artifact(
            progress=100.0 * run.results / max(total, 1),
            key=f"{ARTIFACT_KEY}-progress",
            description=f"evaluation run {run.id}",
        )
        async with runner.stopped_means_ended(run.id):
            counts = await evaluate_items(rt.runtime.chat, run, data, artifact_id)
        progress.step("computing the statistics")
        report = await report_run(run.id)
        await _publish(report, rt.log)
        rt.run.add("sent", counts.sent)
        rt.run.add("errors", counts.errors)
        rt.log.info("eval.finished", run_id=str(run.id), sent=counts.sent, errors=counts.errors)
        failure = report.failure() if report.status == "failed" else None
        if failure is not None:
            raise EvaluationFailedError(
                f"run {run.id} failed: {failure}; its report: switchboard evals show {run.id}",
                details={"run_id": str(run.id)},
            )
    return EvaluationReport(run_id=str(run.id), resumed=taken.resumed, counts=counts, report=report)
