"""What a chat request's headers ask for: its id, and the simulator-only ``X-Sim-*`` overrides.

One pass over the headers picks out everything the chat handler needs; requests without
overrides reuse the default :class:`Timing` instead of building one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from functions.simulator.errors import invalid_request
from functions.simulator.faults import Fault, parse_fault

if TYPE_CHECKING:
    from functions.simulator.asgi import Scope
    from functions.simulator.faults import FaultDice

_SLOTS = {
    b"content-type": 0,
    b"x-request-id": 1,
    b"x-sim-fault": 2,
    b"x-sim-ttft-ms": 3,
    b"x-sim-itl-ms": 4,
    b"x-sim-tokens": 5,
}


class ChatHeaders(NamedTuple):
    content_type: bytes | None
    request_id: bytes | None
    fault: bytes | None
    ttft_ms: bytes | None
    itl_ms: bytes | None
    tokens: bytes | None


class Timing(NamedTuple):
    ttft_s: float
    itl_s: float
    tokens: int
    """Reply length before ``max_tokens`` and ``stop`` cut it."""


def scan_headers(scope: Scope) -> ChatHeaders:
    """The first value of each header the chat handler reads."""
    found: list[bytes | None] = [None] * len(_SLOTS)
    slots = _SLOTS
    for name, value in scope["headers"]:
        slot = slots.get(name)
        if slot is not None and found[slot] is None:
            found[slot] = value
    return ChatHeaders(*found)


def _milliseconds(raw: bytes | None, default_s: float, name: str) -> float:
    if raw is None:
        return default_s
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise invalid_request(f"{name} must be a number of milliseconds >= 0", name)
    return value / 1000.0


def resolve_timing(headers: ChatHeaders, default: Timing) -> Timing:
    """The flags' timing unless ``X-Sim-TTFT-Ms``/``X-Sim-ITL-Ms``/``X-Sim-Tokens`` say else."""
    if headers.ttft_ms is None and headers.itl_ms is None and headers.tokens is None:
        return default
    tokens = default.tokens
    if headers.tokens is not None:
        try:
            tokens = int(headers.tokens)
        except ValueError:
            tokens = 0
        if tokens < 1:
            raise invalid_request("X-Sim-Tokens must be an integer >= 1", "X-Sim-Tokens")
    return Timing(
        _milliseconds(headers.ttft_ms, default.ttft_s, "X-Sim-TTFT-Ms"),
        _milliseconds(headers.itl_ms, default.itl_s, "X-Sim-ITL-Ms"),
        tokens,
    )


def resolve_fault(headers: ChatHeaders, dice: FaultDice) -> Fault:
    """``X-Sim-Fault`` if present (``none`` included), else whatever the dice say."""
    if headers.fault is None:
        return dice.roll()
    try:
        return parse_fault(headers.fault.decode("latin-1"))
    except ValueError as exc:
        raise invalid_request(str(exc), "X-Sim-Fault") from None
