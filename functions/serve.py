"""``switchboard serve`` (the functions over HTTP) and ``switchboard dev`` (the quick start)."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx
import msgspec
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

if TYPE_CHECKING:
    from functions.core.settings import Settings

from functions.core.configs.schemas import LLMConfigOut
from functions.core.logging import configure_logging, get_logger

FUNCTIONS = ("chat", "configs", "keys", "upstreams", "openai")
DEV_KEY_FILE = Path(".switchboard/dev-admin-key")
PR_SET_PDEATHSIG = 1
SHUTDOWN_MARGIN_S = 5
# How long `serve` waits to learn whether the database is migrated before it serves anyway.
MIGRATION_CHECK_S = 5.0
# How often a worker checks that its supervisor is still its parent, where the kernel
# cannot be asked to signal it (not Linux).
PARENT_WATCH_INTERVAL_S = 1.0
SIMULATOR_MODEL = "sim-model"
DEFAULT_CONFIG = "default"


def app_factory(function: str | None) -> str:
    if function is None:
        return "functions.gateway:create_app"
    return f"functions.{function}.app:create_app"


def bind_or_exit(host: str, port: int) -> socket.socket:
    """The listening address, bound before anything else starts, or one line and exit 4.

    Bound here rather than by uvicorn, which reports a busy port only in a log line, after
    the app has started, with an exit code that reads as "database unreachable".
    """
    from functions.cli import EXIT_SERVE, fail

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        change = "pick another port with --port or SWITCHBOARD_PORT"
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"{host}:{port}: address already in use: stop what listens there or {change}",
                EXIT_SERVE,
            )
        fail(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}: "
            f"check --host or SWITCHBOARD_HOST, or {change}",
            EXIT_SERVE,
        )
    sock.set_inheritable(True)
    return sock


def set_parent_death_signal(sig: signal.Signals) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (elsewhere: nothing).

    The kernel keeps its promise whatever ends the parent, SIGKILL included, where no
    handler or atexit of the parent's can run.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # not Linux
        pass


def end_with_parent(parent_pid: int, interval: float = PARENT_WATCH_INTERVAL_S) -> None:
    """SIGTERM this process (a worker's graceful drain) once ``parent_pid`` is no longer
    its parent: at once through the kernel on Linux, else within ``interval`` from a
    watchdog thread. A parent that died before this call is noticed here, at once."""
    set_parent_death_signal(signal.SIGTERM)

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    def watch() -> None:
        while not orphaned():
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    if orphaned():
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


class WorkerConfig(uvicorn.Config):
    """uvicorn's configuration for ``--workers N``: each worker ends with its supervisor.

    A supervisor killed with SIGKILL cannot stop its workers, which would otherwise serve
    on, orphaned, for as long as the machine runs (48 of them still answered an hour on).
    The config is what uvicorn hands each worker process, and :meth:`load` is the first
    thing a worker does with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.supervisor_pid = os.getpid()

    def load(self) -> None:
        if os.getpid() != self.supervisor_pid:  # in a worker, not the supervisor
            end_with_parent(self.supervisor_pid)
        super().load()


def server_config(settings: Settings, *, function: str | None, workers: int) -> uvicorn.Config:
    """uvicorn's configuration: the app, the limits of ``functions.http_limits``, the drain."""
    from functions.http_limits import HttpLimits, attach

    config = (WorkerConfig if workers > 1 else uvicorn.Config)(
        app_factory(function),
        factory=True,
        workers=workers,
        loop="uvloop",
        http="functions.http_limits:LimitedHttpToolsProtocol",
        lifespan="on",
        access_log=False,  # one structured line per request comes from the app itself
        log_config=None,
        timeout_keep_alive=settings.http_keep_alive_s,
        # On SIGTERM sends drain within shutdown_grace_s, then record themselves (retrying
        # the database for up to outcome_retry_s); uvicorn cancels only what is left after.
        timeout_graceful_shutdown=int(
            settings.shutdown_grace_s + settings.outcome_retry_s + SHUTDOWN_MARGIN_S
        ),
    )
    attach(config, HttpLimits.from_settings(settings))
    return config


def run_server(
    settings: Settings, *, function: str | None, sock: socket.socket, workers: int
) -> None:
    """Serve on ``sock`` (from :func:`bind_or_exit`) until stopped."""
    from functions.cli import EXIT_SERVE, fail

    if workers > 1 and settings.rate_limit_url is None:
        # Each worker keeps its own counters: a key's limits would be N times what they say.
        # Said as a log line like every other (JSON off a terminal), at warning level.
        configure_logging(settings.resolved_log_format, settings.log_level)
        get_logger("switchboard.serve").warning(
            "limits.per_process",
            workers=workers,
            message=(
                f"limits are per process: each of the {workers} workers enforces every key's "
                f"limits and budgets on its own (up to {workers}x what they say); set "
                "SWITCHBOARD_RATE_LIMIT_URL=redis://... to share them"
            ),
        )
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its metrics here; /metrics aggregates them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="switchboard-metrics-")
    config = server_config(settings, function=function, workers=workers)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
            return
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE:  # uvicorn's, which would read as our "database"
            fail("the server did not start: the lines above say why", EXIT_SERVE)
        raise
    if not server.started:
        fail("the server did not start: the lines above say why", EXIT_SERVE)


def warn_if_not_migrated(settings: Settings) -> None:
    """One line before serving a database that cannot serve yet: a SQLite file that does
    not exist, or migrations not applied. The server starts all the same (readiness fails
    and /v1 answers 503 until `switchboard db migrate`); a database that cannot be reached
    in time is left for readiness to report."""
    from functions.core.db.engine import describe_url, sqlite_file_missing
    from functions.core.db.migrate import known_migrations, pending_migrations
    from functions.core.runtime import open_runtime

    if (missing := sqlite_file_missing(settings.database_url)) is not None:
        click.echo(
            f"warning: no SQLite database at {missing}: readiness fails and /v1 answers 503 "
            "until `switchboard db migrate` creates it",
            err=True,
        )
        return

    async def pending() -> list[str]:
        async with asyncio.timeout(MIGRATION_CHECK_S), open_runtime(settings, use_llm=False):
            return await pending_migrations()

    try:
        waiting = asyncio.run(pending())
    except Exception:  # unreachable or slow: readiness says so once serving
        return
    if waiting:
        click.echo(
            f"warning: {describe_url(settings.database_url)} is not migrated "
            f"({len(waiting)} of {len(known_migrations())} migration(s) not applied): "
            "readiness fails and /v1 answers 503 until `switchboard db migrate` is run",
            err=True,
        )


@click.command("serve")
@click.option("--function", type=click.Choice(FUNCTIONS), help="Serve one function only.")
@click.option("--host", default=None, help="Default: SWITCHBOARD_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: SWITCHBOARD_PORT (8080).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
def serve(function: str | None, host: str | None, port: int | None, workers: int) -> None:
    """Serve every function in one process (or one with --function)."""
    from functions.cli import settings_or_exit

    settings = settings_or_exit()
    sock = bind_or_exit(host or settings.host, settings.port if port is None else port)
    warn_if_not_migrated(settings)
    run_server(settings, function=function, sock=sock, workers=workers)


# --- dev -----------------------------------------------------------------------------


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when the parent exits.

    uvicorn re-raises the signal that stopped it, so the parent may never reach atexit;
    this way the simulator cannot outlive ``switchboard dev`` however it ends (elsewhere
    than Linux, atexit still covers a clean exit).
    """
    set_parent_death_signal(signal.SIGTERM)


def start_simulator(host: str = "127.0.0.1") -> tuple[subprocess.Popen[bytes], str]:
    """Start the bundled simulator with human-like pacing; return it and its base URL."""
    port = 8000 if _port_is_free(host, 8000) else _free_port(host)
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        [
            sys.executable,
            "-m",
            "functions.simulator",
            "--host",
            host,
            "--port",
            str(port),
            "--model",
            SIMULATOR_MODEL,
            "--ttft-ms",
            "150",
            "--itl-ms",
            "15",
            "--tokens",
            "48",
        ],
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call, no locks or threads
    )
    atexit.register(_stop, process)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException("the vLLM simulator failed to start")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, f"{url}/v1"
        except httpx.TransportError:
            time.sleep(0.1)
    raise click.ClickException("the vLLM simulator did not become healthy in 20 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


class LocalState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``switchboard dev`` found or made so the quick start's commands work."""

    created: list[Path]
    """Files and folders made for a new SQLite database."""
    secret: str | None
    """A new admin key's secret, to show once and save; None when the saved one works."""
    key_note: str | None
    """Why a new key was made when a saved one was there."""
    config: LLMConfigOut
    """The default configuration."""
    config_note: str | None
    """What was done to have a default configuration, when one had to be made."""


async def prepare_local_state(
    settings: Settings, model: str, *, key_file: Path = DEV_KEY_FILE
) -> LocalState:
    """Migrate, and make sure the quick start has what it needs whatever was done through
    the API since the last start: an admin key that this database accepts (the one saved
    in ``key_file``, else a new one), and a default configuration."""
    from functions.core.db.engine import create_sqlite_file, engine_from_url
    from functions.core.db.migrate import migrate
    from functions.core.runtime import open_runtime

    # The quick start means to create its database: private, before anything opens it.
    created = create_sqlite_file(engine_from_url(settings.database_url))
    async with open_runtime(settings, use_llm=False) as runtime:
        await migrate(runtime.engine)
        secret, key_note = await _admin_key(_read_secret(key_file), key_file)
        config, config_note = await _default_config(model)
    return LocalState(
        created=created,
        secret=secret,
        key_note=key_note,
        config=config,
        config_note=config_note,
    )


def _read_secret(key_file: Path) -> str | None:
    try:
        return key_file.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


async def _admin_key(saved: str | None, key_file: Path) -> tuple[str | None, str | None]:
    """(a new secret, why) when the saved key is missing or not a working admin key here."""
    from functions.core.keys import service as keys
    from functions.core.keys.schemas import ApiKeyCreate

    note = None
    if saved is not None:
        key = await keys.find_key(saved)
        if key is None:
            note = f"the key in {key_file} is not in this database"
        elif key.revoked_at is not None:
            note = f"the key in {key_file} ({key.prefix}...) was revoked"
        elif "admin" not in key.scopes:
            note = f"the key in {key_file} ({key.prefix}...) lacks the admin scope"
        else:
            return None, None
    created = await keys.create_key(ApiKeyCreate(name="local-admin", scopes=["admin", "chat"]))
    return created.secret, note and f"{note}: made a new one"


async def _default_config(model: str) -> tuple[LLMConfigOut, str | None]:
    """The default configuration; when there is none (it was archived, say), make one:
    ``default`` again if that name is live, else a new one under the first free name."""
    from functions.core.configs import service as configs
    from functions.core.configs.schemas import LLMConfigCreate, LLMConfigSpec

    default = await configs.get_default_config()
    if default is not None:
        return default, None
    for suffix in range(1, 1000):
        name = DEFAULT_CONFIG if suffix == 1 else f"{DEFAULT_CONFIG}-{suffix}"
        latest = await configs.latest_version(name)
        if latest is None:
            made = await configs.create_config(
                LLMConfigCreate(
                    name=name,
                    model=model,
                    is_default=True,
                    system_prompt="You are a helpful assistant.",
                )
            )
            if name == DEFAULT_CONFIG and len(await configs.list_configs()) == 1:
                return made, None  # a new database: nothing to say
            why = "no configuration was the default"
            if name != DEFAULT_CONFIG:
                why += f" and {DEFAULT_CONFIG!r} is archived"
            return made, f"{why}: created {name!r} (model {model}) as the default"
        if latest.archived_at is None:
            spec = msgspec.convert(latest, LLMConfigSpec, from_attributes=True)
            made = await configs.update_config(name, msgspec.structs.replace(spec, is_default=True))
            return made, (
                f"no configuration is the default: made {name!r} the default again "
                f"(version {made.version}, same settings)"
            )
    raise click.ClickException("no free name for a default configuration")


def _served_models(llm_url: str, api_key: str | None) -> list[str] | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{llm_url}/models", headers=headers, timeout=3)
        return [str(card["id"]) for card in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def save_secret(key_file: Path, secret: str) -> None:
    """Write the quick start's admin key, readable by this user alone (even if the file or
    its folder already existed with wider permissions)."""
    if not key_file.parent.exists():
        key_file.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)


def _prepare_or_exit(settings: Settings, model: str) -> LocalState:
    from functions.cli import run_or_exit

    return run_or_exit(settings, lambda: prepare_local_state(settings, model))


def _simulator_banner(llm_url: str) -> None:
    click.echo("")
    click.echo(click.style("!" * 78, fg="yellow"))
    for line in (
        "  SIMULATED REPLIES: no SWITCHBOARD_LLM_URLS set, so Switchboard is talking",
        f"  to the bundled vLLM simulator at {llm_url}.",
        "  Set SWITCHBOARD_LLM_URLS=http://your-vllm:8000/v1 for real answers.",
    ):
        click.echo(click.style(line, fg="yellow", bold=True))
    click.echo(click.style("!" * 78, fg="yellow"))


def _state_banner(
    settings: Settings, state: LocalState, *, llm_url: str, served: list[str] | None
) -> None:
    """Where the data is, the default configuration and the key, and what dev changed."""
    from functions.cli import echo_escaped, warn_if_readable_by_others
    from functions.core.db.engine import describe_url

    def note(text: str) -> None:
        click.echo(click.style(f"                {text}", fg="yellow"))

    click.echo("")
    click.echo(f"database:       {describe_url(settings.database_url)}")
    for path in state.created:
        click.echo(f"                created {path} (readable by you only)")
    warn_if_readable_by_others(settings)
    config = state.config
    echo_escaped(f"default config: {config.name} (version {config.version}, model {config.model})")
    if state.config_note:
        note(state.config_note)
    if served is not None and config.model not in served:
        note(
            f"its model is not served at {llm_url} ({', '.join(served)}): sends fail "
            f"until you PUT /v1/configs/{config.name} with one that is"
        )
    if state.secret:
        click.echo(f"admin API key:  {state.secret}   (saved to {DEV_KEY_FILE}; shown once)")
        if state.key_note:
            note(state.key_note)
    else:
        click.echo(f"admin API key:  in {DEV_KEY_FILE} (checked: active, admin)")


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - compared, not bound


@click.command("dev")
@click.option("--host", default=None, help="Default: SWITCHBOARD_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: SWITCHBOARD_PORT (8080).")
def dev(host: str | None, port: int | None) -> None:
    """Quick start: migrate, make sure there is a local admin key and a default config,
    start a simulator when SWITCHBOARD_LLM_URLS is unset, and serve every function."""
    from functions.cli import settings_or_exit
    from functions.core.settings import is_configured

    settings = settings_or_exit()
    host = host or settings.host
    port = settings.port if port is None else port
    # First: a busy port stops the quick start before it creates or starts anything.
    sock = bind_or_exit(host, port)
    simulated = not is_configured("llm_urls")
    if simulated:
        _, llm_url = start_simulator()
        # The served app reads its settings again, from this environment.
        os.environ["SWITCHBOARD_LLM_URLS"] = llm_url
        served: list[str] | None = [SIMULATOR_MODEL]
    else:
        llm_url = settings.llm_urls[0]
        served = _served_models(llm_url, settings.llm_api_key)
    state = _prepare_or_exit(settings, served[0] if served else "default-model")
    if state.secret is not None:
        # A local convenience for the quick start's curl commands; the database keeps
        # only the hash.
        save_secret(DEV_KEY_FILE, state.secret)
    if simulated:
        _simulator_banner(llm_url)
    _state_banner(settings, state, llm_url=llm_url, served=served)
    base = f"http://{_client_host(host)}:{sock.getsockname()[1]}"
    click.echo(f"serving:        {base}  (API docs at {base}/schema)")
    click.echo(f"try it:         export SB={base} KEY=$(cat {DEV_KEY_FILE})")
    click.echo("")
    run_server(settings, function=None, sock=sock, workers=1)
