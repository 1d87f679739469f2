"""The ``switchboard`` command: database, keys and configs administration, and servers.

The composition root of the command line: it sits above ``functions.core`` (which never
imports it), opens what each command needs through ``functions.core.runtime``, and loads
the server, quick-start and simulator commands only when one of them runs.

Every command reads the settings once, reports a bad setting or an unreachable database
in one line on stderr, and exits non-zero: 1 for a refused operation (unknown id, ...),
2 for bad usage or settings, 3 when the database cannot be reached, does not exist or is
not migrated, 4 when a server cannot listen on its address (in use, or not allowed).

Only ``db migrate`` and ``dev`` create a database; every other command refuses a SQLite
file that is not there instead of leaving an empty one behind.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import msgspec

from functions.core.errors import SwitchboardError
from functions.core.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_SERVE = 4


def fail(message: str, code: int) -> NoReturn:
    echo_escaped(f"error: {message}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def with_database(
    settings: Settings, work: Callable[[], Awaitable[T]], *, creates: bool = False
) -> T:
    """Run ``work`` in a runtime on the configured database (no LLM client), turning
    failures into exit codes. Unless the command ``creates`` the database, a SQLite file
    that does not exist stops it before anything is opened."""
    from functions.core.db.engine import sqlite_file_missing
    from functions.core.runtime import open_runtime

    if not creates and (missing := sqlite_file_missing(settings.database_url)) is not None:
        fail(
            f"no SQLite database at {missing}: run `switchboard db migrate` to create it "
            f"(SWITCHBOARD_DATABASE_URL={settings.database_url})",
            EXIT_DATABASE,
        )

    async def run() -> T:
        async with open_runtime(settings, use_llm=False):
            return await work()

    return run_or_exit(settings, run)


def run_or_exit(settings: Settings, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` to completion, turning a refusal and a database failure into one line
    and their exit codes."""
    from functions.core.db.engine import describe_url
    from functions.core.db.errors import as_database_error

    try:
        return asyncio.run(work())
    except SwitchboardError as exc:
        fail(exc.message, EXIT_REFUSED)
    except Exception as exc:
        database_error = as_database_error(exc)
        if database_error is None:
            raise
        fail(f"{describe_url(settings.database_url)}: {database_error.message}", EXIT_DATABASE)


def warn_if_readable_by_others(settings: Settings) -> None:
    from functions.core.db.engine import readable_by_others

    if (path := readable_by_others(settings.database_url)) is not None:
        click.echo(
            f"warning: other local users can read {path} (every conversation is in it): "
            f"run `chmod 600 {path}`",
            err=True,
        )


def printable(text: str) -> str:
    """``text`` with control and invisible characters escaped, so a name stored before
    they were refused cannot rewrite or disguise a line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def echo_escaped(text: str, *, err: bool = False) -> None:
    """Echo lines that show stored data (names, models, item ids, upstream messages) with
    each line :func:`printable`: an escape sequence kept in the database cannot rewrite
    the terminal, while the text's own line breaks stay."""
    click.echo("\n".join(printable(line) for line in text.split("\n")), err=err)


def echo_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="switchboard")
def main() -> None:
    """Switchboard: a self-hosted LLM chat gateway for vLLM.

    Settings come from SWITCHBOARD_* environment variables (or a .env file); see docs/settings.md.
    """


# --- db ------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema: apply migrations, show their status."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply every pending migration (PostgreSQL or SQLite, from SWITCHBOARD_DATABASE_URL)."""
    from functions.core.db.engine import (
        create_sqlite_file,
        current_engine,
        describe_url,
        engine_from_url,
    )
    from functions.core.db.migrate import migrate

    settings = settings_or_exit()
    for path in create_sqlite_file(engine_from_url(settings.database_url)):
        what = "SQLite database" if path.suffix else "folder"
        click.echo(f"created {what} {path} (readable by you only)")
    warn_if_readable_by_others(settings)
    report = with_database(settings, lambda: migrate(current_engine()), creates=True)
    where = describe_url(settings.database_url)
    if report.applied:
        click.echo(f"applied {len(report.applied)} migration(s) to {where}:")
        for migration_id in report.applied:
            click.echo(f"  {migration_id}")
    else:
        click.echo(f"{where} is up to date ({len(report.already_applied)} migration(s) applied)")


@db.command("status")
def db_status() -> None:
    """List migrations and whether each has been applied."""
    from functions.core.db.engine import current_engine
    from functions.core.db.migrate import migration_status

    settings = settings_or_exit()
    status = with_database(settings, lambda: migration_status(current_engine()))
    for migration_id, applied in status.items():
        click.echo(f"{'applied' if applied else 'pending':8} {migration_id}")


@db.command("rollback")
@click.option("--to", "migration_id", default="all", show_default=True, help="Migration id.")
@click.confirmation_option(prompt="Undo migrations (this drops tables and their data)?")
def db_rollback(migration_id: str) -> None:
    """Undo migrations, newest first, down to and including --to."""
    from functions.core.db.engine import current_engine
    from functions.core.db.migrate import rollback

    settings = settings_or_exit()
    undone = with_database(settings, lambda: rollback(current_engine(), migration_id))
    click.echo(f"rolled back {len(undone)} migration(s)")


# --- keys ----------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys: create (the secret is shown once), list, revoke."""


def _access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--expires-at``, ``--config`` and ``--model``: a key's access, for create and update."""
    for option in reversed(
        (
            click.option(
                "--expires-at",
                metavar="TIME",
                help="When the key stops working: RFC 3339 with a time zone "
                "(2027-01-31T00:00:00Z), or a date (midnight UTC).",
            ),
            click.option(
                "--config",
                "configs",
                multiple=True,
                metavar="NAME",
                help="A configuration the key may use (repeat for several; default: any).",
            ),
            click.option(
                "--model",
                "models",
                multiple=True,
                metavar="MODEL",
                help="A model the key may use (repeat for several; default: any).",
            ),
        )
    ):
        command = option(command)
    return command


def _expiry(text: str | None) -> str | None:
    """``--expires-at`` as the API takes it (RFC 3339), or exit 2 saying what is wrong."""
    from datetime import UTC, date, datetime

    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).isoformat()
        parsed = datetime.fromisoformat(text)
    except ValueError:
        fail(f"invalid --expires-at {text!r}: give 2027-01-31T00:00:00Z or 2027-01-31", EXIT_USAGE)
    if parsed.tzinfo is None:
        fail(f"--expires-at {text!r} needs a time zone (Z, or +02:00)", EXIT_USAGE)
    return parsed.isoformat()


def _decoded(fields: dict[str, Any], into: type[T]) -> T:
    """Options as the API's Struct, checked as a request body is (exit 2 if refused)."""
    try:
        return msgspec.convert(fields, into)
    except (msgspec.ValidationError, SwitchboardError) as exc:
        fail(str(exc), EXIT_USAGE)


def _show_access(key: Any) -> None:
    if key.expires_at is not None:
        click.echo(f"expires: {key.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    if key.allowed_configs is not None:
        click.echo(f"configs: {printable(','.join(key.allowed_configs)) or '(none)'}")
    if key.allowed_models is not None:
        click.echo(f"models:  {printable(','.join(key.allowed_models)) or '(none)'}")


_LIMIT_OPTIONS = (
    ("requests_per_minute", "requests a minute"),
    ("tokens_per_minute", "tokens (prompt and reply) a minute"),
    ("max_concurrent", "requests in progress at once"),
    ("tokens_per_day", "tokens a UTC day"),
    ("tokens_per_month", "tokens a UTC month"),
)


def _limit_options(command: Any) -> Any:
    """``--requests-per-minute`` ... ``--tokens-per-month``: a key's limits (unset: the
    gateway's default, SWITCHBOARD_LIMIT_DEFAULT_*)."""
    for field, what in reversed(_LIMIT_OPTIONS):
        command = click.option(
            "--" + field.replace("_", "-"),
            field,
            type=click.IntRange(min=1),
            default=None,
            help=f"At most this many {what} (default: the gateway's default).",
        )(command)
    return command


def _show_limits(key: Any) -> None:
    set_limits = {
        field: value
        for field, _ in _LIMIT_OPTIONS
        if (value := getattr(key.limits, field)) is not None
    }
    if set_limits:
        shown = ", ".join(f"{field}={value}" for field, value in set_limits.items())
        click.echo(f"limits: {shown}")


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--admin", is_flag=True, help="Also grant the admin scope (configs and keys).")
@_access_options
@_limit_options
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
def keys_create(
    *,
    name: str,
    admin: bool,
    expires_at: str | None,
    configs: tuple[str, ...],
    models: tuple[str, ...],
    as_json: bool,
    **limits: int | None,
) -> None:
    """Create an API key and print its secret, once. Only a hash is stored."""
    from functions.core.keys.schemas import ApiKeyCreate, name_problem
    from functions.core.keys.service import create_key

    if (problem := name_problem(name)) is not None:
        fail(f"invalid --name '{printable(name)}': {problem}", EXIT_USAGE)
    data = _decoded(
        {
            "name": name,
            "scopes": ["admin", "chat"] if admin else ["chat"],
            "expires_at": _expiry(expires_at),
            "allowed_configs": list(configs) or None,
            "allowed_models": list(models) or None,
            "limits": limits,
        },
        ApiKeyCreate,
    )
    settings = settings_or_exit()
    created = with_database(settings, lambda: create_key(data))
    if as_json:
        echo_json(created)
        return
    click.echo(f"id:     {created.id}")
    click.echo(f"name:   {printable(created.name)}")
    click.echo(f"scopes: {','.join(created.scopes)}")
    _show_access(created)
    _show_limits(created)
    click.echo(f"secret: {created.secret}")
    click.echo("Store the secret now: it is not stored and cannot be shown again.", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
def keys_list(as_json: bool, active: bool) -> None:
    """List API keys (prefixes only; secrets are never stored)."""
    from functions.core.keys.service import list_keys

    settings = settings_or_exit()
    found = with_database(settings, lambda: list_keys(include_revoked=not active))
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no API keys yet: create one with `switchboard keys create --name NAME`")
        return
    click.echo(f"{'ID':36}  {'PREFIX':12}  {'SCOPES':10}  {'STATE':7}  NAME")
    for key in found:
        state = "revoked" if key.revoked_at else "active"
        scopes = ",".join(key.scopes)
        name = printable(key.name)
        click.echo(f"{key.id!s:36}  {key.prefix:12}  {scopes:10}  {state:7}  {name}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key with this ID; it stops working at once."""
    from functions.core.keys.service import revoke_key

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        fail(f"{key_id!r} is not a key id (a UUID, as `switchboard keys list` shows)", EXIT_USAGE)
    settings = settings_or_exit()
    revoked = with_database(settings, lambda: revoke_key(parsed))
    when = f"{revoked.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    click.echo(f"revoked {revoked.id} ({printable(revoked.name)}) at {when}")
    click.echo("Every running server refuses it from its next request.", err=True)


@keys.command("update")
@click.argument("key_id")
@_access_options
@click.option("--no-expiry", is_flag=True, help="The key never expires.")
@click.option("--any-config", is_flag=True, help="The key may use every configuration.")
@click.option("--any-model", is_flag=True, help="The key may use every model.")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
def keys_update(
    *,
    key_id: str,
    expires_at: str | None,
    configs: tuple[str, ...],
    models: tuple[str, ...],
    no_expiry: bool,
    any_config: bool,
    any_model: bool,
    as_json: bool,
) -> None:
    """Change a key's expiry or the configurations and models it may use (the options
    given replace what the key had; the others stay). Every running server applies it at
    once."""
    from functions.core.keys.schemas import ApiKeyUpdate
    from functions.core.keys.service import update_key

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        fail(f"{key_id!r} is not a key id (a UUID, as `switchboard keys list` shows)", EXIT_USAGE)
    fields: dict[str, Any] = {}
    for given, cleared, field, value in (
        (expires_at is not None, no_expiry, "expires_at", _expiry(expires_at)),
        (bool(configs), any_config, "allowed_configs", list(configs)),
        (bool(models), any_model, "allowed_models", list(models)),
    ):
        if given and cleared:
            fail(f"{field}: give a value or clear it, not both", EXIT_USAGE)
        if given or cleared:
            fields[field] = None if cleared else value
    if not fields:
        fail("nothing to change: give --expires-at, --config, --model or a --no/--any option", 2)
    data = _decoded(fields, ApiKeyUpdate)
    settings = settings_or_exit()
    updated = with_database(settings, lambda: update_key(parsed, data))
    if as_json:
        echo_json(updated)
        return
    click.echo(f"updated {updated.id} ({printable(updated.name)})")
    _show_access(updated)


@keys.command("limits")
@click.argument("key_id")
@_limit_options
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
def keys_limits(*, key_id: str, as_json: bool, **limits: int | None) -> None:
    """Replace a key's limits: the options given set them, those left out take the
    gateway's default (SWITCHBOARD_LIMIT_DEFAULT_*). Running servers apply them within
    5 seconds."""
    from functions.core.keys.schemas import KeyLimits
    from functions.core.keys.service import set_limits

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        fail(f"{key_id!r} is not a key id (a UUID, as `switchboard keys list` shows)", EXIT_USAGE)
    data = _decoded(limits, KeyLimits)
    settings = settings_or_exit()
    updated = with_database(settings, lambda: set_limits(parsed, data))
    if as_json:
        echo_json(updated)
        return
    click.echo(f"limits of {updated.id} ({printable(updated.name)}) replaced")
    _show_limits(updated)


# --- usage ---------------------------------------------------------------------------


@main.command("usage")
@click.option("--from", "since", metavar="TIME", help="Start: a whole hour or a date (UTC).")
@click.option("--to", "until", metavar="TIME", help="End, excluded (default: this hour's end).")
@click.option(
    "--group-by",
    default="",
    metavar="DIMS",
    help="Comma-separated: key, config, config_version, model, upstream, day, hour.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, as GET /v1/usage answers.")
def usage(since: str | None, until: str | None, group_by: str, as_json: bool) -> None:
    """Requests, tokens, errors and latency per key, configuration, model, upstream or
    time (what GET /v1/usage answers an admin key), from --from (a day before --to by
    default) to --to."""
    from functions.core.usage.totals import parse_group_by, parse_time, usage_totals

    try:
        dimensions = parse_group_by(group_by)
        start = parse_time(since, "--from") if since else None
        end = parse_time(until, "--to") if until else None
    except SwitchboardError as exc:
        fail(exc.message, EXIT_USAGE)
    settings = settings_or_exit()
    answer = with_database(
        settings, lambda: usage_totals(since=start, until=end, group_by=dimensions)
    )
    if as_json:
        echo_json(answer)
        return
    click.echo(f"{answer.from_:%Y-%m-%dT%H:%MZ} to {answer.to:%Y-%m-%dT%H:%MZ}")
    if not answer.data:
        click.echo("no exchanges in this window")
        return
    shown = ("day", "hour", "key", "config", "config_version", "model", "upstream")
    columns = [d for d in shown if d in dimensions]
    head = [c.upper() for c in columns] + [
        "REQUESTS", "OK", "FAILED", "CANCELLED", "PROMPT", "COMPLETION", "P50 MS", "P95 MS",
        "TTFT P50", "ERRORS",
    ]  # fmt: skip
    lines = [head]
    for row in answer.data:
        values = {
            "day": f"{row.start:%Y-%m-%d}" if row.start else "",
            "hour": f"{row.start:%Y-%m-%dT%H:00Z}" if row.start else "",
            "key": row.key_name or str(row.key_id),
            "config": row.config or "-",
            "config_version": f"{row.config or '-'}@{row.config_version or '-'}",
            "model": row.model or "-",
            "upstream": row.upstream or "-",
        }
        lines.append(
            [printable(values[c]) for c in columns]
            + [
                str(row.requests), str(row.complete), str(row.failed), str(row.cancelled),
                str(row.prompt_tokens), str(row.completion_tokens),
                _ms(row.latency_ms.p50), _ms(row.latency_ms.p95), _ms(row.ttft_ms.p50),
                printable(",".join(f"{code}:{n}" for code, n in row.errors.items())) or "-",
            ]
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# --- configs -------------------------------------------------------------------------


@main.group()
def configs() -> None:
    """LLM configurations."""


@configs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "include_archived", is_flag=True, help="Include archived configs.")
def configs_list(as_json: bool, include_archived: bool) -> None:
    """List configurations (latest version of each)."""
    from functions.core.configs.service import list_configs

    settings = settings_or_exit()
    found = with_database(settings, lambda: list_configs(include_archived=include_archived))
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no configurations yet: create one with POST /v1/configs")
        return
    click.echo(f"{'NAME':24}  {'VERSION':7}  {'DEFAULT':7}  MODEL")
    for config in found:
        default = "yes" if config.is_default else ""
        archived = " (archived)" if config.archived_at else ""
        name, model = printable(config.name), printable(config.model)
        click.echo(f"{name:24}  {config.version:<7}  {default:7}  {model}{archived}")


class _LazyCommand(click.Command):
    """A command whose module is imported only when it runs (or its help is shown), so
    ``switchboard keys list`` never loads the web server or the simulator."""

    def __init__(self, name: str, target: str, help_text: str) -> None:
        super().__init__(name, help=help_text, context_settings={"ignore_unknown_options": True})
        self._target = target
        self._loaded: click.Command | None = None

    def _load(self) -> click.Command:
        if self._loaded is None:
            import importlib

            module, attribute = self._target.split(":")
            self._loaded = getattr(importlib.import_module(module), attribute)
        return self._loaded

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        return self._load().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        return self._load().invoke(ctx)

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.help or ""


for _name, _target, _help in (
    ("serve", "functions.serve:serve", "Serve every function in one process (or one)."),
    ("dev", "functions.serve:dev", "Quick start: migrate, key, default config, serve."),
    ("sim-vllm", "functions.simulator.cli:sim_vllm", "Run the vLLM simulator (a test double)."),
    # A group: its subcommands are resolved by the loaded group itself.
    ("flows", "flows.cli:flows", "Scheduled work (Prefect): list, run, serve, deploy."),
    ("evals", "flows.evals_cli:evals", "Evaluation runs: list, show, compare."),
    ("datasets", "flows.evals_cli:datasets", "Evaluation datasets: build one from history."),
):
    main.add_command(_LazyCommand(_name, _target, _help))

if __name__ == "__main__":
    main()
