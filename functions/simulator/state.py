"""Everything the simulator remembers between requests, owned by one app instance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from functions.simulator import SIMULATOR_NAME
from functions.simulator.faults import FaultDice
from functions.simulator.metrics import Metrics
from functions.simulator.scheduler import Scheduler
from functions.simulator.text import TokenVocabulary

if TYPE_CHECKING:
    from functions.simulator.options import SimulatorOptions

_MAX_DISTINCT_PATHS = 512  # random URLs must not grow the per-path table without end
_OTHER_PATHS = "<other>"


class RequestCounts:
    """The ``/sim/stats`` counters. ``/sim/*`` requests are not counted."""

    __slots__ = ("aborted", "chat_in_flight", "faults", "in_flight", "paths", "total")

    def __init__(self) -> None:
        self.total = 0
        self.in_flight = 0
        self.chat_in_flight = 0
        self.aborted = 0
        self.paths: dict[str, int] = {}
        self.faults: dict[str, int] = {}

    def count_path(self, path: str) -> None:
        paths = self.paths
        if path in paths:
            paths[path] += 1
        elif len(paths) < _MAX_DISTINCT_PATHS:
            paths[path] = 1
        else:
            paths[_OTHER_PATHS] = paths.get(_OTHER_PATHS, 0) + 1

    def count_fault(self, label: str) -> None:
        self.faults[label] = self.faults.get(label, 0) + 1


class SimulatorState:
    """Health, counters, metrics, the run queue and the fault dice."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.healthy = not options.unhealthy
        self.counts = RequestCounts()
        self.metrics = Metrics(options.models, options.max_num_seqs)
        self.scheduler = Scheduler(options.max_num_seqs)
        self.dice = FaultDice(
            fail_rate=options.fail_rate,
            hang_rate=options.hang_rate,
            cut_after=options.cut_after,
            seed=options.seed,
        )
        self.vocabulary = TokenVocabulary()
        # With ``record_requests`` only: kept as received (references, no copies) and only
        # decoded when /sim/stats asks, so a test can see what the gateway forwarded without
        # slowing the hot path.
        self.last_chat_headers: list[tuple[bytes, bytes]] | None = None
        self.last_chat_body: bytes | None = None

    def reset(self) -> None:
        """Zero the counters and metrics and reseed the dice; live requests keep running."""
        old = self.counts
        self.counts = RequestCounts()
        self.counts.in_flight = old.in_flight
        self.counts.chat_in_flight = old.chat_in_flight
        self.metrics.reset()
        self.dice.reset()
        self.last_chat_headers = None
        self.last_chat_body = None

    def stats(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "simulator": SIMULATOR_NAME,
            "healthy": self.healthy,
            "in_flight": counts.in_flight,
            "chat_in_flight": counts.chat_in_flight,
            "total_requests": counts.total,
            "aborted": counts.aborted,
            "running": self.scheduler.running,
            "waiting": self.scheduler.waiting,
            "paths": dict(counts.paths),
            "faults": dict(counts.faults),
            "last_chat_request": self._last_chat_request(),
        }

    def _last_chat_request(self) -> dict[str, Any] | None:
        if self.last_chat_headers is None:
            return None
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.last_chat_headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            if name == "authorization":
                # Whether one was sent, and its scheme; never the key.
                value = f"{value.partition(' ')[0]} [redacted]"
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body: Any = None
        if self.last_chat_body is not None:
            try:
                body = msgspec.json.decode(self.last_chat_body)
            except msgspec.DecodeError:
                body = self.last_chat_body.decode("utf-8", "replace")
        return {"headers": headers, "body": body}
