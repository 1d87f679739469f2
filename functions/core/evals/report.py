"""A run's report: per configuration and scorer, and configurations compared on the same items.

Per configuration: mean score and pass rate, each with a 95% bootstrap interval over items;
latency and time to first token (p50, p95); tokens; errors by code. An item the model
failed (no output after its retries) counts as a score of 0 and a failure for every
scorer, so errors never make a configuration look better; a scorer that failed on an item
(its own error) leaves that item out of that scorer's numbers and is counted.

Comparisons pair the items both configurations answered (see :mod:`.stats` for the
tests): a pair where either side failed (no output after its retries) never ran on one
side, so it is left out of the tests, and counted (``left_out``), never scored as a tie.
The first configuration of a run is the baseline; each other one is compared with it.

A run in which some configuration answered no item at all has failed
(:meth:`RunReport.failure`): there is nothing to say about that configuration but its errors.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Literal

import msgspec

from functions.core.evals import stats
from functions.core.evals.stats import Interval, PairedTest, Verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.evals.schemas import EvalResultOut, EvalRunOut

# Scorers that give a verdict (1 or 0): compared with McNemar's test on pass/fail.
VERDICT_TYPES = frozenset(
    {"exact_match", "contains", "regex", "json_valid", "json_schema", "numeric"}
)
# Items listed per direction when verdicts changed; the count is always complete.
CHANGED_SHOWN = 20

Overall = Literal["better", "worse", "mixed", "no significant difference", "not enough data"]


class ScorerSummary(msgspec.Struct, kw_only=True):
    name: str
    type: str
    n: int
    errors: int
    mean: Interval | None
    pass_rate: Interval | None


class ConfigSummary(msgspec.Struct, kw_only=True):
    config: str
    run_id: str
    items: int
    completed: int
    errors: int
    error_codes: dict[str, int]
    retried: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    scorers: list[ScorerSummary]


class ScorerComparison(msgspec.Struct, kw_only=True):
    name: str
    test: PairedTest
    p_adjusted: float
    verdict: Verdict
    # Items whose verdict changed from A to B: failed then passed, passed then failed.
    fixed: int
    broken: int
    fixed_items: list[str]
    broken_items: list[str]


class Comparison(msgspec.Struct, kw_only=True):
    baseline: str
    candidate: str
    # Items both sides answered: the pairs the tests ran on.
    items: int
    overall: Overall
    scorers: list[ScorerComparison]
    # Items both sides have a result for, left out because either side failed.
    left_out: int = 0

    def headline(self) -> str:
        if self.overall in ("better", "worse"):
            which = [s.name for s in self.scorers if s.verdict == self.overall]
            said = f"{self.candidate} is {self.overall} than {self.baseline} on {', '.join(which)}"
        elif self.overall == "mixed":
            said = f"{self.candidate} vs {self.baseline}: better on some scorers, worse on others"
        elif self.overall == "not enough data":
            said = (
                f"{self.candidate} vs {self.baseline}: not enough paired items to compare "
                f"({self.items} answered by both)"
            )
        else:
            said = (
                f"{self.candidate} vs {self.baseline}: no significant difference "
                f"on {self.items} paired item(s)"
            )
        if self.left_out:
            said += f"; {self.left_out} pair(s) left out (an error on either side)"
        return said


class RunReport(msgspec.Struct, kw_only=True):
    run_id: str
    name: str
    dataset: str
    items: int
    status: str
    configs: list[ConfigSummary]
    comparisons: list[Comparison]

    def markdown(self) -> str:
        """The report as Markdown (the Prefect artifact)."""
        title = self.name or self.run_id
        lines = [
            f"# Evaluation {title}",
            "",
            f"Run `{self.run_id}` on `{self.dataset}`: {self.items} item(s), status {self.status}.",
            "",
            "## Configurations",
            "",
            "| config | scorer | n | mean score (95% CI) | pass rate (95% CI) | scorer errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for config in self.configs:
            for scorer in config.scorers:
                lines.append(
                    f"| {config.config} | {scorer.name} | {scorer.n} | {_mean(scorer.mean)} "
                    f"| {_rate(scorer.pass_rate)} | {scorer.errors} |"
                )
        lines += [
            "",
            "| config | completed | errors | latency p50 / p95 ms | ttft p50 / p95 ms "
            "| prompt tokens | completion tokens |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for config in self.configs:
            errors = f"{config.errors} {_codes(config.error_codes)}".strip()
            lines.append(
                f"| {config.config} | {config.completed}/{config.items} | {errors} "
                f"| {_ms(config.latency_p50_ms)} / {_ms(config.latency_p95_ms)} "
                f"| {_ms(config.ttft_p50_ms)} / {_ms(config.ttft_p95_ms)} "
                f"| {config.prompt_tokens} | {config.completion_tokens} |"
            )
        for comparison in self.comparisons:
            lines += ["", f"## {comparison.candidate} vs {comparison.baseline}", ""]
            lines += [f"**{comparison.headline()}.**", ""]
            lines += [
                "| scorer | n | A | B | B - A (95% CI) | test | p | p (Holm) | verdict "
                "| fixed | broken |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for s in comparison.scorers:
                lines.append(
                    f"| {s.name} | {s.test.n} | {s.test.mean_a:.3f} | {s.test.mean_b:.3f} "
                    f"| {_diff(s.test.difference)} | {s.test.test} | {_p(s.test.p_value)} "
                    f"| {_p(s.p_adjusted)} | **{s.verdict}** | {s.fixed} | {s.broken} |"
                )
            for s in comparison.scorers:
                if s.fixed_items or s.broken_items:
                    lines.append("")
                    lines.append(
                        f"- {s.name}: fixed {_ids(s.fixed_items, s.fixed)}; "
                        f"broken {_ids(s.broken_items, s.broken)}"
                    )
        return "\n".join(lines) + "\n"

    def failure(self) -> str | None:
        """Why the run failed: the configurations that answered no item (None if each
        answered at least one)."""
        empty = [
            f"{c.config} ({c.errors} error(s): {_codes(c.error_codes).strip('()')})"
            for c in self.configs
            if c.items and not c.completed
        ]
        if not empty:
            return None
        return f"no successful item for {', '.join(empty)}"

    def table(self) -> list[dict[str, object]]:
        """One row per configuration and scorer (the Prefect table artifact)."""
        rows: list[dict[str, object]] = []
        for config in self.configs:
            for scorer in config.scorers:
                rows.append(
                    {
                        "config": config.config,
                        "scorer": scorer.name,
                        "n": scorer.n,
                        "mean": _round(scorer.mean.value if scorer.mean else None),
                        "mean_low": _round(scorer.mean.low if scorer.mean else None),
                        "mean_high": _round(scorer.mean.high if scorer.mean else None),
                        "pass_rate": _round(scorer.pass_rate.value if scorer.pass_rate else None),
                        "pass_low": _round(scorer.pass_rate.low if scorer.pass_rate else None),
                        "pass_high": _round(scorer.pass_rate.high if scorer.pass_rate else None),
                        "errors": config.errors,
                        "latency_p50_ms": _round(config.latency_p50_ms),
                        "latency_p95_ms": _round(config.latency_p95_ms),
                    }
                )
        return rows

    def summary(self) -> list[str]:
        """The report for a terminal."""
        lines = [f"run {self.run_id}  {self.dataset}  {self.items} item(s)  {self.status}"]
        if self.status == "failed" and (why := self.failure()) is not None:
            lines.append(f"failed: {why}")
        for config in self.configs:
            errors = f"{config.errors} error(s) {_codes(config.error_codes)}".strip()
            lines.append(
                f"{config.config}: {config.completed}/{config.items} completed, {errors}; "
                f"latency p50 {_ms(config.latency_p50_ms)} ms, p95 {_ms(config.latency_p95_ms)} "
                f"ms; tokens {config.prompt_tokens} in, {config.completion_tokens} out"
            )
            for scorer in config.scorers:
                failed = f", {scorer.errors} scorer error(s)" if scorer.errors else ""
                lines.append(
                    f"  {scorer.name:18} mean {_mean(scorer.mean):24} "
                    f"pass {_rate(scorer.pass_rate):24} n={scorer.n}{failed}"
                )
        for comparison in self.comparisons:
            lines.append(f"{comparison.headline()}:")
            for s in comparison.scorers:
                lines.append(
                    f"  {s.name:18} B-A {_diff(s.test.difference):30} "
                    f"p={_p(s.test.p_value)} (Holm {_p(s.p_adjusted)}, {s.test.test})  "
                    f"{s.verdict}; fixed {s.fixed}, broken {s.broken}"
                )
        return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mean(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _rate(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    return f"{interval.value:.1%} [{interval.low:.1%}, {interval.high:.1%}]"


def _diff(interval: Interval) -> str:
    return f"{interval.value:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def _p(value: float) -> str:
    return "<0.0001" if value < 0.0001 else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _codes(codes: dict[str, int]) -> str:
    if not codes:
        return ""
    return "(" + ", ".join(f"{code} {n}" for code, n in sorted(codes.items())) + ")"


def _ids(shown: list[str], count: int) -> str:
    if not count:
        return "none"
    more = f" and {count - len(shown)} more" if count > len(shown) else ""
    return ", ".join(f"`{item}`" for item in shown) + more


# Per configuration: scorer name -> item id -> (score, passed); None when the scorer failed.
Scores = dict[str, dict[str, tuple[float, bool] | None]]


def scorer_types(results: Sequence[EvalResultOut]) -> dict[str, str]:
    """Every scorer named in the results, with its type, in first-seen order."""
    types: dict[str, str] = {}
    for result in results:
        for score in result.scores:
            types.setdefault(score.name, score.type)
    return types


def scores_of(results: Sequence[EvalResultOut], types: dict[str, str]) -> Scores:
    """One configuration's scores (see :data:`Scores`); a failed item scores 0 and fails."""
    table: Scores = {name: {} for name in types}
    for result in results:
        if result.error_code is not None:
            for name in types:
                table[name][result.item_id] = (0.0, False)
            continue
        for score in result.scores:
            if score.error is not None or score.score is None:
                table[score.name][result.item_id] = None
            else:
                passed = bool(score.passed) if score.passed is not None else score.score >= 0.5
                table[score.name][result.item_id] = (score.score, passed)
    return table


def summarise(run_id: str, label: str, results: Sequence[EvalResultOut]) -> ConfigSummary:
    """One configuration's numbers (see the module docstring)."""
    types = scorer_types(results)
    table = scores_of(results, types)
    completed = [r for r in results if r.error_code is None]
    latencies = [r.latency_ms for r in completed if r.latency_ms is not None]
    ttfts = [r.ttft_ms for r in completed if r.ttft_ms is not None]
    scorers = []
    for name, kind in types.items():
        values = [v for v in table[name].values() if v is not None]
        scorers.append(
            ScorerSummary(
                name=name,
                type=kind,
                n=len(values),
                errors=sum(v is None for v in table[name].values()),
                mean=stats.mean_interval([score for score, _ in values]),
                pass_rate=stats.mean_interval([float(passed) for _, passed in values]),
            )
        )
    return ConfigSummary(
        config=label,
        run_id=run_id,
        items=len(results),
        completed=len(completed),
        errors=len(results) - len(completed),
        error_codes=dict(Counter(r.error_code for r in results if r.error_code is not None)),
        retried=sum(r.attempts > 1 for r in results),
        latency_p50_ms=stats.percentile(latencies, 50),
        latency_p95_ms=stats.percentile(latencies, 95),
        ttft_p50_ms=stats.percentile(ttfts, 50),
        ttft_p95_ms=stats.percentile(ttfts, 95),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in completed),
        completion_tokens=sum(r.completion_tokens or 0 for r in completed),
        scorers=scorers,
    )


def compare(
    baseline: str,
    a_results: Sequence[EvalResultOut],
    candidate: str,
    b_results: Sequence[EvalResultOut],
) -> Comparison:
    """B (``candidate``) against A (``baseline``) on the items both answered, scorer by
    scorer; the items where either side failed are left out, and counted."""
    types = {**scorer_types(a_results), **scorer_types(b_results)}
    a_table, b_table = scores_of(a_results, types), scores_of(b_results, types)
    a_failed = {r.item_id: r.error_code is not None for r in a_results}
    both_have = [r for r in b_results if r.item_id in a_failed]
    paired_items = [
        r.item_id for r in both_have if r.error_code is None and not a_failed[r.item_id]
    ]
    tests: list[tuple[str, PairedTest, list[str], list[str]]] = []
    for name, kind in types.items():
        a_scores, b_scores = a_table.get(name, {}), b_table.get(name, {})
        both = [
            (item, a, b)
            for item in paired_items
            if (a := a_scores.get(item)) is not None and (b := b_scores.get(item)) is not None
        ]
        binary = kind in VERDICT_TYPES
        left = [float(a[1]) if binary else a[0] for _, a, _ in both]
        right = [float(b[1]) if binary else b[0] for _, _, b in both]
        test = stats.paired_test(left, right, binary=binary or None)
        fixed = [item for item, a, b in both if not a[1] and b[1]]
        broken = [item for item, a, b in both if a[1] and not b[1]]
        tests.append((name, test, fixed, broken))
    adjusted = stats.holm([test.p_value for _, test, _, _ in tests])
    scorers = [
        ScorerComparison(
            name=name,
            test=test,
            p_adjusted=p,
            verdict=stats.verdict(test, p),
            fixed=len(fixed),
            broken=len(broken),
            fixed_items=fixed[:CHANGED_SHOWN],
            broken_items=broken[:CHANGED_SHOWN],
        )
        for (name, test, fixed, broken), p in zip(tests, adjusted, strict=True)
    ]
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        items=len(paired_items),
        overall=_overall([s.verdict for s in scorers]),
        scorers=scorers,
        left_out=len(both_have) - len(paired_items),
    )


def _overall(verdicts: Sequence[Verdict]) -> Overall:
    if not verdicts or all(v == "not enough data" for v in verdicts):
        return "not enough data"
    better, worse = "better" in verdicts, "worse" in verdicts
    if better and worse:
        return "mixed"
    if better:
        return "better"
    return "worse" if worse else "no significant difference"


def by_config(results: Sequence[EvalResultOut]) -> dict[str, list[EvalResultOut]]:
    grouped: dict[str, list[EvalResultOut]] = {}
    for result in results:
        grouped.setdefault(result.config, []).append(result)
    return grouped


def build_report(run: EvalRunOut, results: Sequence[EvalResultOut]) -> RunReport:
    """The report of one run: each configuration, and each compared with the first."""
    grouped = by_config(results)
    labels = [target.label for target in run.configs]
    summaries = [summarise(str(run.id), label, grouped.get(label, [])) for label in labels]
    comparisons = [
        compare(labels[0], grouped.get(labels[0], []), label, grouped.get(label, []))
        for label in labels[1:]
    ]
    return RunReport(
        run_id=str(run.id),
        name=run.name,
        dataset=run.dataset,
        items=run.items,
        status=run.status,
        configs=summaries,
        comparisons=comparisons,
    )


def compare_runs(
    base: EvalRunOut,
    base_results: Sequence[EvalResultOut],
    other: EvalRunOut,
    other_results: Sequence[EvalResultOut],
) -> list[Comparison]:
    """Each configuration of ``other`` against the first of ``base``, on the items (by id)
    both runs have. Labels carry the run's short id so the two sides stay distinguishable."""
    base_label = base.configs[0].label
    base_side = by_config(base_results).get(base_label, [])
    grouped = by_config(other_results)
    return [
        compare(
            f"{base_label} (run {str(base.id)[:8]})",
            base_side,
            f"{target.label} (run {str(other.id)[:8]})",
            grouped.get(target.label, []),
        )
        for target in other.configs
    ]
