"""Waits that fit a loaded machine.

The suite runs on shared machines at load 10-25 on 2 cores, where a process takes tens of
seconds to start and a poll may wait a second for its turn. A wait for something that
should happen (a process answering, a state reached) is a deadline on a hang, so it is
generous; an assertion about how fast something happens compares against a bound with a
margin, or against a baseline measured in the same run.

``SWITCHBOARD_TEST_TIMEOUT_SCALE`` (default 1; ``.ci/run`` sets it from the load) stretches
every such deadline further: ``scaled(seconds)``.
"""

from __future__ import annotations

import functools
import os

TIMEOUT_SCALE_VARIABLE = "SWITCHBOARD_TEST_TIMEOUT_SCALE"


@functools.cache
def timeout_scale() -> float:
    """``SWITCHBOARD_TEST_TIMEOUT_SCALE`` (default 1): how much slower than a quiet
    machine this one may be. Read once; a bad value is an error, not a silent 1."""
    raw = os.environ.get(TIMEOUT_SCALE_VARIABLE, "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_SCALE_VARIABLE}={raw!r}: expected a number >= 1") from None
    if not scale >= 1:
        raise ValueError(f"{TIMEOUT_SCALE_VARIABLE}={raw!r}: expected a number >= 1")
    return scale


def scaled(seconds: float) -> float:
    """A wait of ``seconds`` on a quiet machine, stretched for this one."""
    return seconds * timeout_scale()
