"""The usage rollup: the ledger summed per hour, kept by the database as the ledger changes.

``usage_rollup`` holds one row per hour (UTC, by when the exchange was asked), key,
configuration name and version, model, upstream, status and error code: its requests,
prompt and completion tokens, and histograms of the latency and time to first token of
its completed replies. A trigger on ``usage_ledger`` adds each row as it is written (and
takes back the old values when a row is replaced or deleted), in the writing statement's
transaction: the rollup always equals the ledger, and ``GET /v1/usage`` reads a month in
a few thousand rows instead of millions (``bench/usage_rollup.py``).

Why a histogram: a percentile cannot be summed, and reading every completed reply's
timings again is what the rollup exists to avoid. The buckets are fixed, √2 wide, from
1 ms up (2^(k/2) ms): a percentile is read in the bucket where its rank falls, so it is
within a factor of √2 of the reply at that rank (over many replies, of the exact
percentile; over a handful, ``percentile_cont`` interpolates across gaps the histogram
cannot see), while counts and tokens are exact. Changing the buckets takes a migration
that rebuilds the rollup.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# Bucket k (0 < k < len) holds [BOUNDS_MS[k - 1], BOUNDS_MS[k]); bucket 0 everything under
# 1 ms, the last everything from BOUNDS_MS[-1] (about 12 minutes) up. The migration that
# made the rollup holds the same numbers (tests/core/usage checks they agree).
BOUNDS_MS: tuple[float, ...] = tuple(2 ** (k / 2) for k in range(40))
BUCKETS = len(BOUNDS_MS) + 1
LATENCY_COLUMNS = tuple(f"latency_b{k:02d}" for k in range(BUCKETS))
TTFT_COLUMNS = tuple(f"ttft_b{k:02d}" for k in range(BUCKETS))


def bucket_of(value_ms: float) -> int:
    """The bucket ``value_ms`` is counted in (as the trigger counts it)."""
    for k, bound in enumerate(BOUNDS_MS):
        if value_ms < bound:
            return k
    return len(BOUNDS_MS)


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """The ``fraction`` percentile of the values counted in ``counts`` (one count per
    bucket), None when there are none: the rank ``percentile_cont`` would read, placed
    within its bucket geometrically (the buckets are geometric). The first bucket is read
    as [0, 1 ms) linearly; the last has no upper end and answers its lower one."""
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * (total - 1)
    seen = 0
    for k, count in enumerate(counts):
        if count and rank < seen + count:
            within = min(1.0, max(0.0, (rank - seen + 0.5) / count))
            if k == 0:
                return BOUNDS_MS[0] * within
            if k == len(BOUNDS_MS):
                return BOUNDS_MS[-1]
            low, high = BOUNDS_MS[k - 1], BOUNDS_MS[k]
            return low * math.pow(high / low, within)
        seen += count
    return BOUNDS_MS[-1]
