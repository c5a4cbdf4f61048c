"""The statistics of a comparison: summaries with confidence intervals, paired tests over seeds, Holm's correction
and ranks. Every test comes from scipy; Holm's step-down correction is written here because scipy has none
(``scipy.stats.false_discovery_control`` is Benjamini-Hochberg, which controls another error rate).

Seeds are paired: at a given seed every loss saw the same initial weights, data order and augmentations, so
differences are taken seed by seed.

>>> summary = summarize([90.0, 92.0, 91.0])
>>> round(summary.mean, 2), round(summary.std, 2), summary.n, [round(x, 2) for x in summary.ci]
(91.0, 1.0, 3, [88.52, 93.48])
>>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Seeds from which a comparison also runs Wilcoxon's signed-rank test: with fewer, its exact two-sided p-value
#: cannot fall below 0.05 (n = 5 gives at least 0.0625).
WILCOXON_MIN_SEEDS = 6
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1), count and the t-based 95% confidence interval of the mean."""

    mean: float
    std: float
    n: int
    ci: tuple[float, float]


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, 0, (math.nan, math.nan))
    mean = float(x.mean())
    if n == 1:
        return Summary(mean, math.nan, 1, (math.nan, math.nan))
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, (mean - half, mean + half))


@dataclass(frozen=True)
class Paired:
    """A paired comparison over the seeds both sides have: ``a - b``."""

    diff: Summary  # of the per-seed differences
    p_t: float  # paired t-test, two-sided
    p_wilcoxon: float | None  # Wilcoxon signed-rank, two-sided, from WILCOXON_MIN_SEEDS seeds
    seeds: tuple[int, ...]

    @property
    def p(self) -> float:
        """The p-value the report uses: Wilcoxon's when there are enough seeds, else the t-test's."""
        return self.p_wilcoxon if self.p_wilcoxon is not None else self.p_t

    @property
    def test(self) -> str:
        return "Wilcoxon" if self.p_wilcoxon is not None else "paired t"


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Compare two losses seed by seed (``a[seed] - b[seed]`` over the seeds both have)."""
    seeds = tuple(sorted(set(a) & set(b)))
    x = np.array([a[s] for s in seeds], dtype=np.float64)
    y = np.array([b[s] for s in seeds], dtype=np.float64)
    d = x - y
    if len(seeds) < 2:
        p_t = math.nan
    elif np.allclose(d, d[0]):  # no spread: the t statistic is undefined
        p_t = 1.0 if d[0] == 0 else 0.0
    else:
        p_t = float(stats.ttest_rel(x, y).pvalue)
    p_w = None
    if len(seeds) >= WILCOXON_MIN_SEEDS:
        p_w = 1.0 if not d.any() else float(stats.wilcoxon(x, y).pvalue)
    return Paired(summarize(d), p_t, p_w, seeds)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN stays NaN."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    indexed.sort()
    m, adjusted, running = len(indexed), [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def ranks(means: dict[str, float]) -> dict[str, float]:
    """Rank of each mean, 1 the highest; ties share the average rank; NaN (no value) ranks last."""
    labels = list(means)
    values = np.array([-means[k] if not math.isnan(means[k]) else math.inf for k in labels])
    return dict(zip(labels, (float(r) for r in stats.rankdata(values, method="average"))))


def binomial_interval(successes: int, trials: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a proportion (``scipy.stats.binomtest``)."""
    if trials == 0:
        return (math.nan, math.nan)
    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="exact")
    return (float(interval.low), float(interval.high))
