"""The statistics against values computed independently here (by brute force, by hand, or by
the textbook normal approximation on large samples)."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from functions.core.evals import stats


def brute_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics, written out (type 7)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.mark.parametrize("q", [50, 95, 0, 100, 37.5])
def test_percentiles_interpolate_between_order_statistics(q: float) -> None:
    values = [random.Random(q).uniform(0, 1000) for _ in range(101)] + [3.0, 3.0]
    assert stats.percentile(values, q) == pytest.approx(brute_percentile(values, q))
    assert stats.percentile([], q) is None


def test_the_median_is_the_median() -> None:
    values = [12.0, 3.0, 7.0, 100.0]
    assert stats.percentile(values, 50) == statistics.median(values)


def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k or X >= n-k) for X ~ Binomial(n, 1/2), summing the outcomes one by one."""
    outcomes = list(itertools.product((0, 1), repeat=n))
    extreme = sum(1 for o in outcomes if sum(o) <= k or sum(o) >= n - k)
    return extreme / len(outcomes)


@pytest.mark.parametrize(("a_only", "b_only"), [(0, 10), (1, 9), (3, 7), (5, 5), (2, 0), (0, 0)])
def test_mcnemar_exact_is_a_two_sided_binomial_test(a_only: int, b_only: int) -> None:
    n = a_only + b_only
    want = 1.0 if n == 0 else min(1.0, binomial_two_sided(min(a_only, b_only), n))
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(want)


def test_mcnemar_by_hand() -> None:
    # 10 discordant pairs, all one way: 2 * (1/2)^10.
    assert stats.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def brute_sign_flip(differences: list[float]) -> float:
    observed = abs(sum(differences))
    patterns = list(itertools.product((1, -1), repeat=len(differences)))
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, differences, strict=True))) >= observed - 1e-12
        for signs in patterns
    )
    return hits / len(patterns)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_exact_permutation_test_enumerates_every_sign_pattern(seed: int) -> None:
    rng = random.Random(seed)
    differences = [round(rng.gauss(0.1, 0.3), 3) for _ in range(11)] + [0.0, 0.0]
    p_value, test = stats.sign_flip_p_value(differences)
    assert test == "permutation-exact"
    assert p_value == pytest.approx(brute_sign_flip([d for d in differences if d != 0]))


def test_the_monte_carlo_permutation_test_is_close_to_the_exact_one() -> None:
    rng = random.Random(7)
    differences = [round(rng.gauss(0.15, 0.5), 3) for _ in range(18)]
    exact = brute_sign_flip(differences)
    p_value, test = stats.sign_flip_p_value(differences, permutations=20_000)
    assert test == "permutation-monte-carlo"
    # 20,000 draws: the standard error is at most 0.0036.
    assert p_value == pytest.approx(exact, abs=0.015)
    assert p_value > 0


def test_bootstrap_interval_matches_the_normal_approximation_on_a_large_sample() -> None:
    rng = random.Random(11)
    values = [1.0 if rng.random() < 0.3 else 0.0 for _ in range(4000)]
    mean = sum(values) / len(values)
    half = 1.96 * math.sqrt(mean * (1 - mean) / len(values))
    interval = stats.mean_interval(values)
    assert interval is not None
    assert interval.value == pytest.approx(mean)
    assert interval.low == pytest.approx(mean - half, abs=0.003)
    assert interval.high == pytest.approx(mean + half, abs=0.003)


def test_bootstrap_interval_of_a_constant_and_of_nothing() -> None:
    assert stats.mean_interval([0.5] * 30) == stats.Interval(value=0.5, low=0.5, high=0.5)
    assert stats.mean_interval([]) is None


def test_the_bootstrap_is_repeatable() -> None:
    values = [random.Random(3).random() for _ in range(50)]
    assert stats.mean_interval(values) == stats.mean_interval(values)


def test_holm_by_hand() -> None:
    # Sorted 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04), max(0.04, 0.04).
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_clear_improvement_is_better_and_a_coin_flip_is_not() -> None:
    # A known answer: B passes 40 of 50, A 10; every disagreement is in B's favour.
    a = [1.0] * 10 + [0.0] * 40
    b = [1.0] * 40 + [0.0] * 10
    test = stats.paired_test(a, b)
    assert (test.test, test.a_only, test.b_only) == ("mcnemar-exact", 0, 30)
    assert test.p_value == pytest.approx(2 / 2**30)
    assert test.difference.value == pytest.approx(0.6)
    assert test.difference.low > 0.4
    assert stats.verdict(test, test.p_value) == "better"
    assert stats.verdict(stats.paired_test(b, a), test.p_value) == "worse"

    # Three items changed each way: no evidence either way.
    even = stats.paired_test([1, 1, 1, 0, 0, 0] + [1] * 20, [0, 0, 0, 1, 1, 1] + [1] * 20)
    assert even.p_value == 1.0
    assert stats.verdict(even, even.p_value) == "no significant difference"


def test_a_small_real_difference_is_not_called_without_enough_items() -> None:
    # B is better on 4 of 4 items that differ: p = 0.125, not significant.
    test = stats.paired_test([0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1])
    assert test.p_value == pytest.approx(0.125)
    assert stats.verdict(test, test.p_value) == "no significant difference"


def test_graded_scores_use_the_permutation_test() -> None:
    a = [0.2, 0.4, 0.5, 0.3, 0.6, 0.1, 0.2, 0.3]
    b = [0.3, 0.6, 0.55, 0.5, 0.7, 0.3, 0.25, 0.45]
    test = stats.paired_test(a, b)
    assert test.test == "permutation-exact"
    assert test.p_value == pytest.approx(
        brute_sign_flip([y - x for x, y in zip(a, b, strict=True)])
    )
    assert test.mean_b - test.mean_a == pytest.approx(test.difference.value)
