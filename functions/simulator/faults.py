"""Which failure, if any, a chat request gets: from its ``X-Sim-Fault`` header or the dice.

Header values (case-insensitive):

=============  ==============================================================================
``none``       no fault, whatever the ``--fail-rate``/``--hang-rate``/``--cut-after`` flags say
``500``        500 InternalServerError JSON ("EngineCore encountered an issue…")
``empty500``   500 with an empty body, as vLLM <= 0.16 answered a dead engine
``503``        503 ``{"error":"The model is currently scaling. Please try again later."}``
``hang``       accept the request and never answer (until the client goes away)
``cut:N``      fail after N tokens: mid-stream error event + ``[DONE]``; non-streaming 500
``drop:N``     close the connection after N tokens (streaming), or halfway through the body
``stall:N``    stop after N tokens and keep the connection open, sending nothing more
=============  ==============================================================================
"""

from __future__ import annotations

import enum
import random
from typing import NamedTuple


class FaultKind(enum.Enum):
    NONE = "none"
    ERROR_500 = "500"
    EMPTY_500 = "empty500"
    SCALING_503 = "503"
    HANG = "hang"
    CUT = "cut"
    DROP = "drop"
    STALL = "stall"


_WITH_COUNT = frozenset({FaultKind.CUT, FaultKind.DROP, FaultKind.STALL})


class Fault(NamedTuple):
    kind: FaultKind
    after: int = 0
    """Tokens produced before a ``cut``/``drop``/``stall`` strikes."""

    @property
    def label(self) -> str:
        return self.kind.value


NO_FAULT = Fault(FaultKind.NONE)


def parse_fault(value: str) -> Fault:
    """Parse an ``X-Sim-Fault`` header value; ``ValueError`` on anything unknown."""
    name, sep, count = value.strip().lower().partition(":")
    try:
        kind = FaultKind(name)
    except ValueError:
        raise ValueError(f"unknown X-Sim-Fault {value!r}") from None
    if kind in _WITH_COUNT:
        after = int(count) if sep else 0
        if after < 0:
            raise ValueError(f"X-Sim-Fault {value!r}: the count must be >= 0")
        return Fault(kind, after)
    if sep:
        raise ValueError(f"X-Sim-Fault {value!r} takes no count")
    return Fault(kind)


class FaultDice:
    """The ``--fail-rate``/``--hang-rate``/``--cut-after`` faults, seeded for repeatable runs."""

    def __init__(
        self, *, fail_rate: float, hang_rate: float, cut_after: int | None, seed: int
    ) -> None:
        self._fail_rate = fail_rate
        self._hang_threshold = fail_rate + hang_rate
        self._seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - repeatable dice, not secrets
        self._default = NO_FAULT if cut_after is None else Fault(FaultKind.CUT, cut_after)

    def reset(self) -> None:
        """Start the dice over from the seed, so a reset run repeats the same faults."""
        self._rng = random.Random(self._seed)  # noqa: S311 - repeatable dice, not secrets

    def roll(self) -> Fault:
        if self._hang_threshold <= 0.0:
            return self._default
        draw = self._rng.random()
        if draw < self._fail_rate:
            return Fault(FaultKind.ERROR_500)
        if draw < self._hang_threshold:
            return Fault(FaultKind.HANG)
        return self._default
