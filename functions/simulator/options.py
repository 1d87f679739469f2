"""Every knob of the simulator, in one frozen Struct built once by the CLI."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]


class SimulatorOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the simulated vLLM server behaves. Defaults give a fast, healthy, fault-free server."""

    models: tuple[str, ...] = ("sim-model",)
    """Served model names; the first is the default and the ``root`` of every card."""
    runner: Literal["generate", "pooling"] = "generate"
    """vLLM's ``--runner``: ``generate`` serves chat and completions, ``pooling`` an embedding
    model serving ``/v1/embeddings`` only (vLLM registers routes by the model's tasks)."""
    embedding_dim: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 384
    """Length of an embedding model's vectors."""
    matryoshka: bool = False
    """The embedding model accepts ``dimensions`` (vLLM's ``is_matryoshka``)."""
    matryoshka_dimensions: tuple[Annotated[int, msgspec.Meta(ge=1)], ...] = ()
    """The only ``dimensions`` a matryoshka model accepts; empty: any."""
    ttft_ms: NonNegative = 0.0
    """Delay before the first token (the role chunk when streaming)."""
    itl_ms: NonNegative = 0.0
    """Delay between two tokens."""
    tokens: Annotated[int, msgspec.Meta(ge=1)] = 16
    """Length of every reply in tokens, before ``max_tokens`` and ``stop`` cut it."""
    max_model_len: Annotated[int, msgspec.Meta(ge=1)] = 8192
    max_num_seqs: Annotated[int, msgspec.Meta(ge=0)] = 256
    """Requests generating at once; more wait in a queue (``num_requests_waiting``). 0: no cap."""
    api_keys: tuple[str, ...] = ()
    """Keys required on ``/v1*`` and on the ``/sim/*`` controls."""
    record_requests: bool = False
    """Keep the last chat request (headers and body) for ``/sim/stats``: a test knob, off
    by default because it holds a user's prompt (``switchboard dev`` never sets it)."""
    legacy_errors: bool = False
    """Flat ``{"object":"error",...}`` bodies as vLLM <= 0.10.0 sent them."""
    fail_rate: Fraction = 0.0
    """Fraction of chat requests answered with a 500 InternalServerError."""
    hang_rate: Fraction = 0.0
    """Fraction of chat requests accepted and never answered."""
    cut_after: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Fail every generation after this many tokens (a mid-stream error event when streaming)."""
    unhealthy: bool = False
    """Start with a dead engine: ``/health`` 503, chat 500."""
    seed: int = 0
    """Seed of the dice that pick which requests ``fail_rate``/``hang_rate`` hit."""
