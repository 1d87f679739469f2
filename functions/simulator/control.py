"""``/sim/*``: simulator-only control and introspection for tests. Real vLLM has none of this.

Guarded by ``--api-key`` like ``/v1*`` when keys are set, and not counted in the request
statistics, so polling them never changes what a test measures.

- ``GET /sim/stats``: in-flight, total, aborted and per-path counts, injected faults, the
  run queue, health, and, with ``--record-requests`` only, the last chat request as
  received (its headers, the ``Authorization`` value redacted, and its body).
- ``POST /sim/health`` with ``{"healthy": bool}``: kill or revive the simulated engine.
- ``POST /sim/reset``: zero the counters and metrics and reseed the fault dice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from functions.simulator.asgi import Receive, Scope, Send, read_body, send_bytes
from functions.simulator.errors import error_body, invalid_request
from functions.simulator.schemas import HealthToggle

if TYPE_CHECKING:
    from functions.simulator.state import SimulatorState

_decode_toggle = msgspec.json.Decoder(HealthToggle).decode


class Control:
    """The ``/sim/*`` handlers of one app."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    async def stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, msgspec.json.encode(self._state.stats()))

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        try:
            toggle = _decode_toggle(body)
        except msgspec.DecodeError as exc:
            error = invalid_request(f'expected {{"healthy": bool}}: {exc}', "healthy")
            await send_bytes(send, 400, error_body(error, legacy=False))
            return
        self._state.healthy = toggle.healthy
        await send_bytes(send, 200, msgspec.json.encode({"healthy": toggle.healthy}))

    async def reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._state.reset()
        await send_bytes(send, 200, b'{"reset":true}')
