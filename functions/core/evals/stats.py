"""The statistics of a report, chosen so that "B is better" is said only when the data says so.

- Means and pass rates carry 95% **percentile bootstrap** intervals over items (2,000
  resamples). Seeded: the same results always give the same report.
- Comparing two configurations on the same items uses each item's **paired difference**
  (B - A), so the items' own difficulty cancels out. Its interval is a bootstrap over the
  pairs; its p-value is exact where that is cheap: **McNemar's exact test** (a two-sided
  binomial test on the discordant pairs) for pass/fail scores, a **paired sign-flip
  permutation test** of the mean difference for graded ones (every sign pattern when at
  most 16 pairs differ, else 20,000 seeded random ones, counted with the +1 correction so
  a p-value is never 0).
- Several scorers compared at once are several tests: p-values are **Holm-adjusted** across
  the scorers of a comparison before a verdict is given.

Percentiles (latency p50/p95) interpolate linearly between order statistics (numpy's
default, Hyndman & Fan type 7).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Literal

import msgspec
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

CONFIDENCE = 0.95
RESAMPLES = 2_000
PERMUTATIONS = 20_000
EXACT_PERMUTATION_MAX = 16
ALPHA = 0.05
SEED = 20261129
# Bootstrap resamples are drawn in blocks of about this many values, to bound memory.
_BLOCK_VALUES = 2_000_000

Verdict = Literal["better", "worse", "no significant difference", "not enough data"]


class Interval(msgspec.Struct, frozen=True, kw_only=True):
    """An estimate and its confidence interval."""

    value: float
    low: float
    high: float


class PairedTest(msgspec.Struct, frozen=True, kw_only=True):
    """B - A on the items both scored: the mean difference, its interval and its p-value."""

    n: int
    mean_a: float
    mean_b: float
    difference: Interval
    p_value: float
    test: Literal["mcnemar-exact", "permutation-exact", "permutation-monte-carlo", "none"]
    # Pass/fail pairs that disagree: A passed and B failed, and the other way round.
    a_only: int = 0
    b_only: int = 0


def _as_array(values: Sequence[float]) -> NDArray[np.float64]:
    return np.asarray(values, dtype=np.float64)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linearly interpolated; None for no values."""
    if not values:
        return None
    found: NDArray[np.float64] = np.percentile(_as_array(values), [q])
    return float(found[0])


def bootstrap_means(
    values: NDArray[np.float64], *, resamples: int = RESAMPLES, seed: int = SEED
) -> NDArray[np.float64]:
    """The means of ``resamples`` resamples (with replacement) of ``values``."""
    rng = np.random.default_rng(seed)
    n = len(values)
    rows = max(1, _BLOCK_VALUES // max(n, 1))
    means: list[NDArray[np.float64]] = []
    left = resamples
    while left > 0:
        block = min(rows, left)
        picks = rng.integers(0, n, size=(block, n))
        means.append(values[picks].mean(axis=1))
        left -= block
    return np.concatenate(means)


def mean_interval(
    values: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval | None:
    """The mean with its percentile bootstrap interval; None for no values."""
    if not values:
        return None
    data = _as_array(values)
    mean = float(data.mean())
    if len(data) == 1 or bool(np.all(data == data[0])):
        return Interval(value=mean, low=mean, high=mean)
    means = bootstrap_means(data, resamples=resamples, seed=seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(value=mean, low=float(low), high=float(high))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(a_only + b_only, 1/2) test."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return min(1.0, 2 * tail)


def sign_flip_p_value(
    differences: Sequence[float], *, permutations: int = PERMUTATIONS, seed: int = SEED
) -> tuple[float, Literal["permutation-exact", "permutation-monte-carlo"]]:
    """Two-sided p-value of a paired sign-flip permutation test of the mean difference.

    Under the null hypothesis each pair's difference is as likely to have either sign.
    """
    data = _as_array(differences)
    nonzero = data[data != 0]
    observed = abs(float(data.sum()))
    # A hair of slack so that ties with the observed sum count, whatever the rounding.
    slack = 1e-9 * max(1.0, observed)
    if len(nonzero) == 0:
        return 1.0, "permutation-exact"
    if len(nonzero) <= EXACT_PERMUTATION_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(nonzero))))
        sums = np.abs(signs @ nonzero)
        return float(np.mean(sums >= observed - slack)), "permutation-exact"
    rng = np.random.default_rng(seed)
    hits = 0
    rows = max(1, _BLOCK_VALUES // len(nonzero))
    left = permutations
    while left > 0:
        block = min(rows, left)
        signs = rng.choice((1.0, -1.0), size=(block, len(nonzero)))
        hits += int(np.sum(np.abs(signs @ nonzero) >= observed - slack))
        left -= block
    return (hits + 1) / (permutations + 1), "permutation-monte-carlo"


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    binary: bool | None = None,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> PairedTest:
    """Compare B with A on the same items (``a[i]`` and ``b[i]`` score one item).

    ``binary`` (default: every score is 0 or 1) chooses McNemar's exact test.
    """
    if len(a) != len(b):
        raise ValueError("paired scores need one score of each side per item")
    n = len(a)
    if n == 0:
        nothing = Interval(value=0.0, low=0.0, high=0.0)
        return PairedTest(n=0, mean_a=0.0, mean_b=0.0, difference=nothing, p_value=1.0, test="none")
    left, right = _as_array(a), _as_array(b)
    differences = right - left
    interval = mean_interval(list(differences), confidence=confidence, seed=seed)
    assert interval is not None
    if binary is None:
        binary = bool(np.all(np.isin(left, (0.0, 1.0))) and np.all(np.isin(right, (0.0, 1.0))))
    a_only = int(np.sum((left == 1) & (right == 0))) if binary else 0
    b_only = int(np.sum((left == 0) & (right == 1))) if binary else 0
    if binary:
        p_value = mcnemar_exact(a_only, b_only)
        test: Literal["mcnemar-exact", "permutation-exact", "permutation-monte-carlo", "none"] = (
            "mcnemar-exact"
        )
    else:
        p_value, test = sign_flip_p_value(list(differences), seed=seed)
    return PairedTest(
        n=n,
        mean_a=float(left.mean()),
        mean_b=float(right.mean()),
        difference=interval,
        p_value=p_value,
        test=test,
        a_only=a_only,
        b_only=b_only,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(test: PairedTest, adjusted_p: float, *, alpha: float = ALPHA) -> Verdict:
    """ "better" or "worse" (B against A) only when both the adjusted test and the interval
    agree that the difference is not zero."""
    if test.n < 2:
        return "not enough data"
    if adjusted_p < alpha and test.difference.low > 0:
        return "better"
    if adjusted_p < alpha and test.difference.high < 0:
        return "worse"
    return "no significant difference"
