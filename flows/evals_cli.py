"""``switchboard evals`` and ``switchboard datasets``: read evaluation runs back, build datasets.

    switchboard evals list                          runs, newest first
    switchboard evals show RUN [--compare RUN]      a run's report (and another run against it)
    switchboard datasets from-history --owner KEY [--config NAME] [--since T] [--limit N]
                                      --out FILE    stored replies as a JSONL dataset

Running an evaluation is ``switchboard flows run evaluate``. These commands need no Prefect
(only the ``flows`` extra's numpy, for the statistics); ``functions/cli.py`` loads this
module only when one of them runs. A run is named by its id or a unique prefix of it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec

from functions.cli import (
    EXIT_USAGE,
    echo_escaped,
    echo_json,
    fail,
    printable,
    settings_or_exit,
    with_database,
)

if TYPE_CHECKING:
    from functions.core.evals.report import Comparison, RunReport
    from functions.core.evals.schemas import EvalRunOut


@click.group("evals")
def evals() -> None:
    """Evaluation runs: list them, show a report, compare two runs."""


@evals.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(limit: int, as_json: bool) -> None:
    """Runs, newest first: id, status, results so far, configurations, dataset."""
    from functions.core.evals import service

    page = with_database(settings_or_exit(), lambda: service.list_runs(limit=limit))
    if as_json:
        echo_json([msgspec.to_builtins(run) | {"report": None} for run in page.data])
        return
    if not page.data:
        click.echo(
            "no evaluation runs yet: switchboard flows run evaluate --dataset FILE --config NAME"
        )
        return
    click.echo(f"{'RUN':36}  {'STATUS':11}  {'RESULTS':>9}  {'CREATED':16}  CONFIGS / DATASET")
    for run in page.data:
        total = run.items * len(run.configs)
        configs = ", ".join(target.label for target in run.configs)
        click.echo(
            f"{run.id!s:36}  {run.status:11}  {f'{run.results}/{total}':>9}  "
            f"{run.created_at:%Y-%m-%d %H:%M}  {printable(configs)}  {printable(run.dataset)}"
        )


async def _report(run: EvalRunOut) -> RunReport:
    from functions.core.evals import service
    from functions.core.evals.report import RunReport, build_report

    if run.report is not None and run.status == "complete":
        return msgspec.convert(run.report, RunReport)
    # Interrupted or still running: the report of what is there now.
    return build_report(run, await service.results_of(run.id))


@evals.command("show")
@click.argument("run")
@click.option("--compare", "other", help="Another run: its configurations against RUN's first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--markdown", is_flag=True, help="Print the report as Markdown.")
def show_run(run: str, other: str | None, as_json: bool, markdown: bool) -> None:
    """A run's report: each configuration's scores with 95% intervals, latency, tokens and
    errors, and each configuration against the first with a paired test per scorer."""
    from functions.core.evals import service
    from functions.core.evals.report import compare_runs

    async def load() -> tuple[RunReport, list[Comparison]]:
        base = await service.find_run(run)
        report = await _report(base)
        if other is None:
            return report, []
        versus = await service.find_run(other)
        return report, compare_runs(
            base, await service.results_of(base.id), versus, await service.results_of(versus.id)
        )

    report, comparisons = with_database(settings_or_exit(), load)
    if as_json:
        echo_json(
            {
                "report": msgspec.to_builtins(report),
                "compared": [msgspec.to_builtins(c) for c in comparisons],
            }
        )
        return
    if markdown:
        echo_escaped(report.markdown())
    else:
        for line in report.summary():
            echo_escaped(line)
    if comparisons:
        # The other run's configurations against this one's first, on the items both have.
        across = msgspec.structs.replace(report, configs=[], comparisons=comparisons)
        click.echo("")
        for line in across.summary()[1:]:
            echo_escaped(line)


@click.group("datasets")
def datasets() -> None:
    """Evaluation datasets: build one from stored conversations."""


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(
            f"--since {text!r}: give a date or time, e.g. 2026-11-01 or 2026-11-01T09:00Z",
            EXIT_USAGE,
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@datasets.command("from-history")
@click.option("--owner", required=True, help="The API key (id, or the name of one active key).")
@click.option("--config", help="Only replies produced by this configuration (any version).")
@click.option(
    "--since", help="Only replies created at or after this time (ISO 8601; UTC if no zone)."
)
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The JSONL file to write.",
)
def from_history(owner: str, config: str | None, since: str | None, limit: int, out: Path) -> None:
    """Each completed reply, with the conversation before it (as the model saw it), becomes
    an item; the stored reply is its expected answer. Run a candidate configuration on it:
    switchboard flows run evaluate --dataset FILE --config CANDIDATE."""
    from functions.core.evals import service
    from functions.core.evals.datasets import write_dataset
    from functions.core.evals.history import HistoryDataset, dataset_from_history

    moment = _since(since)

    async def build() -> HistoryDataset:
        key = await service.find_owner(owner)
        return await dataset_from_history(key, config=config, since=moment, limit=limit)

    built = with_database(settings_or_exit(), build)
    write_dataset(out, built.items)
    skipped = f" ({built.skipped} skipped: tool calls, or a NUL)" if built.skipped else ""
    click.echo(f"wrote {len(built.items)} item(s) to {out}{skipped}", err=True)
