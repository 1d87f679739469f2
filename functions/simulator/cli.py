"""``switchboard sim-vllm`` / ``python -m functions.simulator``: serve the simulator."""

from __future__ import annotations

import gc
from typing import Literal

import click
import msgspec

from functions.simulator import SIMULATOR_NAME, VLLM_VERSION
from functions.simulator.options import SimulatorOptions


def build_options(**knobs: object) -> SimulatorOptions:
    """Validate the knobs against :class:`SimulatorOptions` (its bounds live there)."""
    try:
        return msgspec.convert(knobs, SimulatorOptions)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(name="sim-vllm")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("sim-model",),
    show_default=True,
    help="Served model name; repeat for several (the first is the default).",
)
@click.option(
    "--runner",
    type=click.Choice(["generate", "pooling"]),
    default="generate",
    show_default=True,
    help="As vLLM's: 'pooling' serves an embedding model (/v1/embeddings only).",
)
@click.option("--embedding-dim", default=384, show_default=True, help="Embedding length.")
@click.option(
    "--matryoshka", is_flag=True, help="The embedding model accepts 'dimensions' (is_matryoshka)."
)
@click.option(
    "--matryoshka-dimension",
    "matryoshka_dimensions",
    multiple=True,
    type=int,
    help="A 'dimensions' value a matryoshka model accepts; repeat for several (default: any).",
)
@click.option("--ttft-ms", default=0.0, show_default=True, help="Time to first token.")
@click.option("--itl-ms", default=0.0, show_default=True, help="Time between tokens.")
@click.option("--tokens", default=16, show_default=True, help="Reply length in tokens.")
@click.option("--max-model-len", default=8192, show_default=True)
@click.option(
    "--max-num-seqs",
    default=256,
    show_default=True,
    help="Requests generating at once; the rest queue. 0: no cap.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="Require 'Authorization: Bearer KEY' on /v1* and /sim/*; repeat for several keys.",
)
@click.option(
    "--record-requests",
    is_flag=True,
    help="Show the last chat request (headers, prompt) in /sim/stats: for tests only.",
)
@click.option("--legacy-errors", is_flag=True, help="Flat error bodies of vLLM <= 0.10.0.")
@click.option("--fail-rate", default=0.0, show_default=True, help="Fraction of chats -> 500.")
@click.option("--hang-rate", default=0.0, show_default=True, help="Fraction of chats that hang.")
@click.option(
    "--cut-after",
    type=int,
    default=None,
    help="Fail every generation after N tokens (mid-stream error event).",
)
@click.option("--unhealthy", is_flag=True, help="Start with a dead engine (/health 503).")
@click.option("--seed", default=0, show_default=True, help="Seed of the fault dice.")
@click.option(
    "--log-format", type=click.Choice(["json", "console"]), default="console", show_default=True
)
@click.option("--log-level", default="INFO", show_default=True)
def sim_vllm(
    host: str,
    port: int,
    log_format: Literal["json", "console"],
    log_level: str,
    **knobs: object,
) -> None:
    """Serve a fast vLLM SIMULATOR (a test double, not vLLM) speaking vLLM's HTTP API.

    --runner pooling serves an embedding model (/v1/embeddings) instead of chat and
    completions.

    Per-request overrides: X-Sim-Fault (none|500|empty500|503|hang|cut:N|drop:N|stall:N),
    X-Sim-TTFT-Ms, X-Sim-ITL-Ms, X-Sim-Tokens. Test controls (behind --api-key when set):
    GET /sim/stats, POST /sim/health {"healthy": bool}, POST /sim/reset.
    """
    import uvicorn

    from functions.core.logging import configure_logging, get_logger
    from functions.simulator.app import create_app

    options = build_options(**knobs)
    configure_logging(log_format, log_level)
    get_logger("switchboard.simulator").warning(
        "THIS IS A SIMULATOR, NOT vLLM: serving fake completions",
        simulator=SIMULATOR_NAME,
        mimics_vllm=VLLM_VERSION,
        url=f"http://{host}:{port}",
        **{
            name: value
            for name, value in msgspec.structs.asdict(options).items()
            if name != "api_keys"
        },
        auth_keys=len(options.api_keys),
    )
    app = create_app(options)
    # Everything built so far lives for the whole run: keep the collector from rescanning it.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        proxy_headers=False,  # nothing sits in front of a test double; saves a middleware
        log_config=None,
        # Hanging requests must not hold a shutdown hostage.
        timeout_graceful_shutdown=1,
    )
