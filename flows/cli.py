"""``switchboard flows``: Switchboard's scheduled work, as Prefect flows.

    switchboard flows list                     the flows, their schedules and parameters
    switchboard flows run NAME [options]       run one flow once, here, with a progress bar
    switchboard flows serve                    register every deployment on the Prefect
                                               server in PREFECT_API_URL and run them
    switchboard flows deploy --pool NAME       register them for a work pool's workers

``functions/cli.py`` loads this module only when ``switchboard flows`` runs, and Prefect is
imported only by the commands that need it. Wherever these commands start Prefect,
telemetry is off (``PREFECT_SERVER_ANALYTICS_ENABLED=false``, ``DO_NOT_TRACK=1``) unless
those variables were set otherwise.

``flows run`` needs no Prefect server: without ``PREFECT_API_URL`` Prefect starts a
temporary one for the run (its database in ``PREFECT_HOME``, ``~/.prefect`` by default)
and stops it on exit; with it, the run is recorded on that server and shows in its UI.
That temporary API may take 120 s to start (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``,
Prefect's default 20 s is too short on a busy machine); every mistake ``flows run`` can
see without it (options, files, destinations, configurations, the database) is refused
before it starts.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Protocol

import click
import msgspec

from flows import catalog
from functions.cli import (
    EXIT_DATABASE,
    EXIT_REFUSED,
    EXIT_USAGE,
    echo_json,
    fail,
    printable,
    settings_or_exit,
    with_database,
)
from functions.core.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.progress import Progress, TaskID

    from flows.catalog import CatalogFlow
    from flows.deployments import ScheduledFlow
    from functions.core.settings import Settings

TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
# Prefect gives its temporary API 20 s to start; on a busy 2-core machine it took longer
# (flows run failed 3 times in 3), so `flows run` waits longer unless told otherwise.
STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PREFECT_DEFAULTS = {**TELEMETRY_OFF, STARTUP_SETTING: "120"}
NEEDS_PREFECT = "the flows need Prefect: pip install 'switchboard[flows]'"


def _scheduled() -> tuple[ScheduledFlow, ...]:
    """Every flow (importing Prefect, with telemetry off and time for its temporary API to
    start, unless set otherwise), or one line saying what is missing.

    Only for running, serving or deploying: listing and help read ``flows.catalog``."""
    for name, value in PREFECT_DEFAULTS.items():  # before Prefect reads its settings
        os.environ.setdefault(name, value)
    try:
        from flows.deployments import SCHEDULED
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "prefect":
            raise
        fail(NEEDS_PREFECT, EXIT_USAGE)
    return SCHEDULED


# How long `flows serve` and `flows deploy` wait for the Prefect API's first answer.
API_CHECK_TIMEOUT_S = 10.0


def _require_api_url(command: str) -> str:
    """The Prefect API in ``PREFECT_API_URL``, which must answer: otherwise Prefect's own
    client would only fail after its retries (30 s), and `flows serve` would first claim
    to be serving."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        fail(
            f"`switchboard flows {command}` registers deployments on a Prefect server: set "
            "PREFECT_API_URL to its API (http://127.0.0.1:4200/api after `prefect server start`)",
            EXIT_USAGE,
        )
    try:
        # Any answer will do (a busy server's 503, an API that needs a key): only one that
        # never comes is refused here.
        httpx.get(f"{str(url).rstrip('/')}/health", timeout=API_CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        fail(
            f"the Prefect API at {url} cannot be reached ({type(exc).__name__}: {exc}): start "
            "it (`prefect server start`) or set PREFECT_API_URL to one that runs",
            EXIT_REFUSED,
        )
    return str(url)


@click.group("flows")
def flows() -> None:
    """Scheduled work as Prefect flows: list them, run one now, serve or deploy them."""


@flows.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_flows(as_json: bool) -> None:
    """The flows, their deployments' schedules (from SWITCHBOARD_* settings) and parameters."""
    settings = settings_or_exit()
    rows = [
        {
            "name": each.name,
            "deployment": each.deployment,
            "every_s": each.interval_s(settings),
            "tags": list(each.tags),
            "parameters": list(each.parameters),
            "description": each.description,
        }
        for each in catalog.load()
    ]
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'NAME':14}  {'DEPLOYMENT':26}  {'EVERY':>7}  DESCRIPTION")
    for row in rows:
        every = "on demand" if row["every_s"] is None else f"{row['every_s']:g} s"
        click.echo(f"{row['name']:14}  {row['deployment']:26}  {every:>7}  {row['description']}")


# --- run -----------------------------------------------------------------------------


class _FlowCommands(click.Group):
    """``flows run NAME``: one command per flow, its options made from the flow's
    parameters (the schema the Prefect UI's form shows, read from ``flows.catalog``),
    built only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [each.name for each in catalog.load()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = catalog.find(cmd_name)
        return None if found is None else _run_command(found)


_TYPES: dict[str, click.ParamType[Any]] = {"number": click.FLOAT, "integer": click.INT}


def _option(name: str, schema: dict[str, Any], *, required: bool = False) -> click.Option:
    choices = schema.get("anyOf", [schema])
    kinds = [choice.get("type") for choice in choices]
    flag = "--" + name.replace("_", "-")
    help_text = " ".join(str(schema.get("description", "")).split())
    if "array" in kinds:  # a list parameter: the option is given once per value
        return click.Option([flag, name], multiple=True, required=required, help=help_text)
    if "boolean" in kinds:
        no_flag = "--no-" + name.replace("_", "-")
        return click.Option([f"{flag}/{no_flag}", name], default=None, help=help_text)
    kind: click.ParamType[Any] = next((_TYPES[k] for k in kinds if k in _TYPES), click.STRING)
    if enum := next((choice["enum"] for choice in choices if "enum" in choice), None):
        kind = click.Choice([str(value) for value in enum])
    return click.Option([flag, name], type=kind, default=None, required=required, help=help_text)


def _run_command(entry: CatalogFlow) -> click.Command:
    options = [
        _option(name, schema, required=name in entry.required)
        for name, schema in entry.parameters.items()
    ]
    as_json = click.Option(["--json", "as_json"], is_flag=True, help="Print the report as JSON.")

    def run(as_json: bool, **values: Any) -> None:
        chosen = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in values.items()
            if value is not None and value != ()
        }
        _run_once(entry.name, chosen, as_json=as_json)

    return click.Command(
        entry.name,
        params=[*options, as_json],
        callback=run,
        help=f"{entry.description}\n\nOptions left out take their SWITCHBOARD_* setting.",
        short_help=entry.description,
    )


@flows.group("run", cls=_FlowCommands)
def run_flow() -> None:
    """Run one flow once, here, with a progress bar; no Prefect server needed.

    Without PREFECT_API_URL, Prefect starts a temporary API for the run (a few seconds;
    its database in PREFECT_HOME) and stops it afterwards.
    """


class _Report(Protocol):
    def summary(self) -> list[str]: ...


class _Bar:
    """Shows a flow's steps (``flows.progress``) on a rich progress bar."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar = bar
        self._task = task
        self._started = False

    def plan(self, total: int) -> None:
        self._bar.update(self._task, total=total, completed=0)

    def step(self, description: str) -> None:
        if self._started:
            self._bar.advance(self._task)
        self._started = True
        self._bar.update(self._task, description=description)

    def status(self, description: str) -> None:
        self._bar.update(self._task, description=description)

    def finish(self, description: str) -> None:
        total = next(task.total for task in self._bar.tasks if task.id == self._task) or 1
        self._bar.update(self._task, completed=total, total=total, description=description)


# --- checks before Prefect starts ----------------------------------------------------


def _preflight(name: str, parameters: dict[str, Any], settings: Settings) -> None:
    """Refuse here, in about a second, what the run would refuse only after Prefect has
    started (seconds to a minute on a busy machine) and its tasks have retried: exit 2 for
    a usage error (a destination that cannot be a folder, a dataset that cannot be read,
    a configuration that does not exist), 3 for a database that cannot be reached or is
    not migrated."""
    from importlib.util import find_spec

    if find_spec("prefect") is None:  # nor the rest of the flows extra, checked below
        fail(NEEDS_PREFECT, EXIT_USAGE)
    if refused := _parameter_refusal(name, parameters):
        fail(refused, EXIT_USAGE)
    if name == "export" and (refused := _destination_refusal(parameters.get("out"))):
        fail(refused, EXIT_USAGE)
    if name == "evaluate" and (refused := _dataset_refusal(parameters["dataset"], settings)):
        fail(refused, EXIT_USAGE)
    if database := with_database(settings, lambda: _database_refusal(name, parameters)):
        code, message = database
        fail(message, code)


def _parameter_refusal(name: str, parameters: dict[str, Any]) -> str | None:
    """The options against the flow's parameter schema (bounds such as ``--concurrency``
    from 1 to 256), which Prefect would check only once it has started."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

    entry = catalog.find(name)
    assert entry is not None  # the command was made from it
    schema = {"type": "object", "properties": entry.parameters, "required": list(entry.required)}
    # The most telling error (for an optional bound, the bound rather than "not null").
    error = best_match(Draft202012Validator(schema).iter_errors(parameters))
    if error is None:
        return None
    option = "--" + str(error.absolute_path[0]).replace("_", "-") if error.absolute_path else ""
    return f"invalid value for {option}: {error.message}"


def _destination_refusal(out: str | None) -> str | None:
    from functions.core.exports.destinations import LocalDestination, open_destination

    if out is None:
        return None
    try:
        destination = open_destination(out)
    except InvalidInputError as exc:
        return exc.message
    except (ValueError, ImportError) as exc:  # fsspec: a protocol it does not know
        return f"invalid destination {printable(out)!r}: {exc}"
    if not isinstance(destination, LocalDestination):
        return None  # a bucket: its credentials and permissions are the run's to find out
    return _folder_refusal(out, destination.root)


def _folder_refusal(out: str, root: Path) -> str | None:
    # The folder is created by the run, with its missing parents: the nearest existing
    # one must be a folder this process may create folders in.
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot export to {printable(out)}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot export to {printable(out)}: {existing} is not writable by this user"
    return None


def _dataset_refusal(path: str, settings: Settings) -> str | None:
    from functions.core.evals.datasets import load_dataset

    try:
        load_dataset(path, max_message_chars=settings.max_message_chars)
    except InvalidInputError as exc:  # missing, not UTF-8, or invalid lines (every one named)
        return exc.message
    except OSError as exc:  # a folder, or not readable by this user
        return f"cannot read the dataset {printable(path)}: {exc.strerror}"
    return None


async def _database_refusal(name: str, parameters: dict[str, Any]) -> tuple[int, str] | None:
    """Whether the database is migrated, and the configurations the run names exist."""
    from functions.core.configs.service import get_config
    from functions.core.db.engine import current_engine
    from functions.core.db.migrate import migration_status
    from functions.core.evals.service import resolve_targets

    status = await migration_status(current_engine())
    if pending := [migration for migration, applied in status.items() if not applied]:
        return EXIT_DATABASE, (
            f"the database is not migrated ({len(pending)} of {len(status)} migration(s) "
            "pending): run `switchboard db migrate`"
        )
    try:
        if name == "evaluate":
            await resolve_targets(parameters.get("config", []))
        if name == "export" and (config := parameters.get("config")) is not None:
            await get_config(config)
    except (InvalidInputError, NotFoundError) as exc:
        return EXIT_USAGE, exc.message
    return None


def _run_once(name: str, parameters: dict[str, Any], *, as_json: bool) -> None:
    settings = settings_or_exit()  # a bad setting stops here, in one line
    _preflight(name, parameters, settings)
    [scheduled] = [each for each in _scheduled() if each.name == name]
    from prefect.context import SyncClientContext
    from prefect.settings import PREFECT_API_URL
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from flows import progress
    from functions.core.logging import configure_logging

    api = PREFECT_API_URL.value()
    starting = f"connecting to {api}" if api else "starting a temporary Prefect API"
    failure: BaseException | None = None
    report: _Report | None = None
    columns = (
        SpinnerColumn(),
        TextColumn(f"[bold]{scheduled.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        # Inside the bar, so log lines print above it; Prefect's own lines are then
        # formatted like every other (the flow's runtime configures the same again).
        configure_logging(settings.resolved_log_format, settings.log_level)
        task = bar.add_task(starting, total=None)
        shown = _Bar(bar, task)
        try:
            # One API client for the whole run, opened (and the temporary API started)
            # here, and closed: Prefect's engine would otherwise open one it never closes.
            with SyncClientContext.get_or_create(), progress.reporting_to(shown):
                report = asyncio.run(scheduled.flow(**parameters))
        except Exception as exc:  # the run's failure, already logged by Prefect
            failure = exc
        shown.finish("failed" if failure else "done")
    if failure is not None and _temporary_api_did_not_start(failure):
        fail(
            f"Prefect's temporary API did not start within {os.environ[STARTUP_SETTING]} s: "
            f"set {STARTUP_SETTING} higher, or run `prefect server start` and set "
            "PREFECT_API_URL",
            EXIT_REFUSED,
        )
    if failure is not None or report is None:
        fail(f"{scheduled.name} failed: {failure}", EXIT_REFUSED)
    if as_json:
        echo_json(msgspec.to_builtins(report))
    else:
        from functions.cli import echo_escaped

        for line in report.summary():
            echo_escaped(line)


def _temporary_api_did_not_start(failure: BaseException) -> bool:
    # Prefect raises a bare RuntimeError with this text (and the server's whole output),
    # the only sign of it there is.
    return isinstance(failure, RuntimeError) and str(failure).startswith(
        "Timed out while attempting to connect to ephemeral Prefect API server"
    )


# --- serve and deploy ----------------------------------------------------------------


def _when(entry: CatalogFlow, settings: Settings) -> str:
    every = entry.interval_s(settings)
    return "on demand" if every is None else f"every {every:g} s"


@flows.command("serve")
def serve_flows() -> None:
    """Register every flow as a scheduled deployment on PREFECT_API_URL and run them here.

    Each run is a subprocess of this one. Stop with Ctrl-C or SIGTERM: the schedules are
    paused until the next `flows serve`.
    """
    scheduled = _scheduled()
    settings = settings_or_exit()
    url = _require_api_url("serve")
    from flows.deployments import pause_schedules, serve_all

    click.echo(f"serving {len(scheduled)} deployment(s) on {url}:", err=True)
    for each in catalog.load():
        click.echo(f"  {each.deployment:28} {_when(each, settings)}", err=True)
    try:
        asyncio.run(serve_all(settings))
    except KeyboardInterrupt:
        pass
    finally:
        # However serving ended (Ctrl-C, SIGTERM's sys.exit, an error), in a fresh loop:
        # the serving one was cancelled on the way out.
        try:
            asyncio.run(pause_schedules())
        except Exception as exc:  # the Prefect server went away too: say so, do not trace
            fail(f"stopped, but the schedules could not be paused: {exc}", EXIT_REFUSED)
        click.echo("stopped; schedules paused until the next `flows serve`", err=True)


@flows.command("deploy")
@click.option("--pool", required=True, help="The work pool whose workers run the flows.")
def deploy_flows(pool: str) -> None:
    """Register every flow as a scheduled deployment for the workers of a work pool.

    Create the pool once (`prefect work-pool create NAME --type process`, or `--type
    kubernetes` for a run per Job, as the Helm chart does), then start workers where
    switchboard[flows] is installed and SWITCHBOARD_* is set: `prefect worker start --pool
    NAME`. No image is built and no code is pushed.
    """
    _scheduled()  # Prefect, with telemetry off, or one line saying it is missing
    settings = settings_or_exit()
    url = _require_api_url("deploy")
    from flows.deployments import deploy_all

    try:
        ids = asyncio.run(deploy_all(settings, pool))
    except ValueError as exc:
        hint = f" (create it: `prefect work-pool create {pool} --type process`)"
        fail(f"{exc}{hint if 'work pool' in str(exc) else ''}", EXIT_REFUSED)
    for each, deployment_id in zip(catalog.load(), ids, strict=True):
        click.echo(f"{each.deployment:28} {_when(each, settings)}  {deployment_id}")
    click.echo(
        f"registered on {url} for work pool {pool!r}: start workers with "
        f"`prefect worker start --pool {pool}`",
        err=True,
    )
