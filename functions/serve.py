"""``switchboard serve`` (the functions over HTTP) and ``switchboard dev`` (the quick start)."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx
import uvicorn

if TYPE_CHECKING:
    from functions.core.settings import Settings

FUNCTIONS = ("chat", "configs", "keys")
DEV_KEY_FILE = Path(".switchboard/dev-admin-key")
PR_SET_PDEATHSIG = 1
SHUTDOWN_MARGIN_S = 5
SIMULATOR_MODEL = "sim-model"


def app_factory(function: str | None) -> str:
    if function is None:
        return "functions.gateway:create_app"
    return f"functions.{function}.app:create_app"


def run_server(
    settings: Settings, *, function: str | None, host: str, port: int, workers: int
) -> None:
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker writes its metrics here; /metrics aggregates them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="switchboard-metrics-")
    uvicorn.run(
        app_factory(function),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # one structured line per request comes from the app itself
        log_config=None,
        # On SIGTERM sends drain within shutdown_grace_s, then record themselves (retrying
        # the database for up to outcome_retry_s); uvicorn cancels only what is left after.
        timeout_graceful_shutdown=int(
            settings.shutdown_grace_s + settings.outcome_retry_s + SHUTDOWN_MARGIN_S
        ),
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
    run_server(
        settings,
        function=function,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers,
    )


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
    this way the simulator cannot outlive ``switchboard dev`` however it ends.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: atexit still covers a clean exit
        pass


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


async def prepare_local_state(
    settings: Settings, model: str, *, create_admin_key: bool
) -> tuple[str | None, str]:
    """Migrate; create an admin key if asked and a default config if none; return both."""
    from functions.core.configs import service as configs
    from functions.core.configs.schemas import LLMConfigCreate
    from functions.core.db.engine import create_sqlite_file, engine_from_url
    from functions.core.db.migrate import migrate
    from functions.core.keys import service as keys
    from functions.core.keys.schemas import ApiKeyCreate
    from functions.core.runtime import open_runtime

    # The quick start means to create its database: private, before anything opens it.
    create_sqlite_file(engine_from_url(settings.database_url))
    async with open_runtime(settings, use_llm=False) as runtime:
        await migrate(runtime.engine)
        secret = None
        if create_admin_key:
            created = await keys.create_key(
                ApiKeyCreate(name="local-admin", scopes=["admin", "chat"])
            )
            secret = created.secret
        default = await configs.get_default_config()
        if default is None:
            default = await configs.create_config(
                LLMConfigCreate(
                    name="default",
                    model=model,
                    is_default=True,
                    system_prompt="You are a helpful assistant.",
                )
            )
    return secret, default.name


def _first_model(llm_url: str, api_key: str | None) -> str | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{llm_url}/models", headers=headers, timeout=3)
        models = response.json()["data"]
        return str(models[0]["id"]) if models else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


@click.command("dev")
def dev() -> None:
    """Quick start: migrate, create a local admin key and default config, start a simulator
    when SWITCHBOARD_LLM_URLS is unset, and serve every function."""
    from functions.cli import settings_or_exit
    from functions.core.settings import is_configured

    settings = settings_or_exit()
    simulated = not is_configured("llm_urls")
    if simulated:
        _, llm_url = start_simulator()
        # The served app reads its settings again, from this environment.
        os.environ["SWITCHBOARD_LLM_URLS"] = llm_url
        model = SIMULATOR_MODEL
    else:
        model = _first_model(settings.llm_urls[0], settings.llm_api_key) or "default-model"
    secret, config_name = asyncio.run(
        prepare_local_state(settings, model, create_admin_key=not DEV_KEY_FILE.exists())
    )
    if secret is not None:
        # A local convenience for the quick start's curl commands; the database keeps
        # only the hash. Readable by this user alone.
        DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        DEV_KEY_FILE.touch(mode=0o600)
        DEV_KEY_FILE.write_text(secret + "\n")

    banner = click.style
    click.echo("")
    if simulated:
        click.echo(banner("!" * 78, fg="yellow"))
        click.echo(
            banner(
                "  SIMULATED REPLIES: no SWITCHBOARD_LLM_URLS set, so Switchboard is talking",
                fg="yellow",
                bold=True,
            )
        )
        click.echo(
            banner(
                f"  to the bundled vLLM simulator at {os.environ['SWITCHBOARD_LLM_URLS']}.",
                fg="yellow",
                bold=True,
            )
        )
        click.echo(
            banner(
                "  Set SWITCHBOARD_LLM_URLS=http://your-vllm:8000/v1 for real answers.",
                fg="yellow",
                bold=True,
            )
        )
        click.echo(banner("!" * 78, fg="yellow"))
    click.echo(f"database:       {settings.database_url}")
    click.echo(f"default config: {config_name}")
    if secret:
        click.echo(f"admin API key:  {secret}   (saved to {DEV_KEY_FILE}; shown once)")
    else:
        click.echo(f"admin API key:  in {DEV_KEY_FILE}")
    click.echo(f"serving:        http://{settings.host}:{settings.port}  (API docs at /schema)")
    click.echo("")
    run_server(settings, function=None, host=settings.host, port=settings.port, workers=1)
