"""The statistics of a comparison over seeds: summaries with t intervals, the paired t-test, the stratified
estimate of an effect over several tasks, Holm's correction, ranks with ties, and what a test can detect with its
seeds. Every test is scipy's; written here are what scipy lacks:

* Holm's step-down correction (``scipy.stats.false_discovery_control`` is Benjamini-Hochberg, another error rate);
* the stratified estimate (:func:`stratified`): the mean of per-task mean differences, each task weighted equally,
  its standard error from the within-task variances and Welch-Satterthwaite degrees of freedom (Satterthwaite
  1946), so that differences *between* tasks do not inflate the variance as a pooled sample's would;
* the power of the two-sided t-test from the noncentral t distribution (Cohen 1988, ch. 2), which gives the
  smallest difference a comparison detects with its seeds and the seeds an observed effect would need.

Seeds are paired: at a given seed every loss saw the same initial weights, data order and augmentations, so
differences are taken seed by seed. One rule is ours, for exactly-zero spread: differences that are all exactly
zero have p = 1 (the t statistic is 0/0; nothing differs); differences all equal to one non-zero number keep
scipy's answer (t = +-inf, p = 0).

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
from scipy import optimize, stats

ALPHA = 0.05
#: The probability of detecting a difference that the detectable differences and the seeds needed are given for.
POWER = 0.8
#: An interval from fewer values than this is flagged: with 2 values the t interval is 12.7 standard errors wide.
FEW = 3
#: Means equal to this many decimals are ties: summing the same scores in another order changes a mean by about
#: 1e-14 at scores of 100, and no score is measured finer than 1e-9.
TIE_DECIMALS = 9
#: The name of the one test every comparison of a report uses.
TEST = "paired t-test"


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1), count and the t-based 95% confidence interval of the mean."""

    mean: float
    std: float
    n: int
    ci: tuple[float, float]

    @property
    def few(self) -> bool:
        """An interval from fewer than :data:`FEW` values: shown, and flagged."""
        return 1 < self.n < FEW


def mean(values: Sequence[float]) -> float:
    """The mean, exactly rounded whatever the order of the values (``math.fsum``): ties do not depend on it."""
    return math.fsum(values) / len(values) if len(values) else math.nan


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, 0, (math.nan, math.nan))
    centre = mean(x.tolist())
    if n == 1:
        return Summary(centre, math.nan, 1, (math.nan, math.nan))
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return Summary(centre, std, n, (centre - half, centre + half))


@dataclass(frozen=True)
class Paired:
    """A paired comparison over the seeds both sides have: ``a - b``, with the paired t-test's two-sided p."""

    diff: Summary  # of the per-seed differences
    t: float
    p: float  # NaN with fewer than 2 paired seeds
    seeds: tuple[int, ...]


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Compare two losses seed by seed (``a[seed] - b[seed]`` over the seeds both have)."""
    seeds = tuple(sorted(set(a) & set(b)))
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    t, p = t_test(d)
    return Paired(summarize(d), t, p, seeds)


def t_test(d: np.ndarray, null: float = 0.0) -> tuple[float, float]:
    """The two-sided one-sample t-test of ``mean(d) == null`` (scipy's), NaN with fewer than 2 values; differences
    exactly equal to ``null`` everywhere have t = 0 and p = 1 (scipy: 0/0, NaN)."""
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == null):
        return 0.0, 1.0
    result = stats.ttest_1samp(d, null)
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class Stratified:
    """An effect over strata (tasks): the mean of their means, each weighted equally, with a t interval and a
    two-sided p-value against ``null`` from Welch-Satterthwaite degrees of freedom."""

    effect: float
    se: float
    df: float
    ci: tuple[float, float]
    t: float
    p: float
    n: int  # values over all strata
    strata: int


def stratified(samples: Sequence[Sequence[float]], null: float = 0.0) -> Stratified:
    """The stratified estimate of ``samples`` (one sequence per stratum, each of 2 values or more). With one
    stratum it is the one-sample t-test; the variance of the mean of K means is ``sum(s_k^2 / n_k) / K^2``."""
    if not samples or any(len(x) < 2 for x in samples):
        raise ValueError(f"a stratified estimate needs at least one stratum and 2 values in each, got sizes "
                         f"{[len(x) for x in samples]}")  # fmt: skip
    arrays = [np.asarray(x, dtype=np.float64) for x in samples]
    k = len(arrays)
    effect = math.fsum(mean(x.tolist()) for x in arrays) / k
    shares = np.array([x.var(ddof=1) / len(x) for x in arrays])  # each stratum's squared standard error
    n = sum(len(x) for x in arrays)
    if not shares.any():  # no spread in any stratum: t_test's rule (p = 1 at the null, else t = +-inf, p = 0)
        t = 0.0 if effect == null else math.copysign(math.inf, effect - null)
        p = 1.0 if effect == null else 0.0
        return Stratified(effect, 0.0, math.nan, (effect, effect), t, p, n, k)
    se = math.sqrt(shares.sum()) / k
    df = float(shares.sum() ** 2 / sum(v**2 / (len(x) - 1) for v, x in zip(shares, arrays)))
    t = (effect - null) / se
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
    return Stratified(effect, se, df, (effect - half, effect + half), t, float(2 * stats.t.sf(abs(t), df)), n, k)


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
    """Rank of each mean, 1 the highest, on means rounded to :data:`TIE_DECIMALS`: ties share the average rank.
    A NaN mean (no value) gets no rank."""
    ranked = {key: round(value, TIE_DECIMALS) for key, value in means.items() if not math.isnan(value)}
    order = stats.rankdata([-value for value in ranked.values()], method="average")
    return dict(zip(ranked, (float(r) for r in order)))


def binomial_interval(successes: int, trials: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a proportion (``scipy.stats.binomtest``)."""
    if trials == 0:
        return (math.nan, math.nan)
    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=1 - ALPHA, method="exact")
    return (float(interval.low), float(interval.high))


# ---------------------------------------------------------------- what a test can detect with its seeds


def power(effect_size: float, n: int, level: float = ALPHA) -> float:
    """The power of the two-sided one-sample (paired) t-test at ``level`` with ``n`` values for a true mean of
    ``effect_size`` standard deviations: both tails of the noncentral t (``scipy.stats.nct``)."""
    df, shift = n - 1, effect_size * math.sqrt(n)
    critical = float(stats.t.isf(level / 2, df))
    lower = float(stats.nct.cdf(-critical, df, shift))  # NaN where scipy's series underflows far from it: 0
    return float(stats.nct.sf(critical, df, shift)) + (0.0 if math.isnan(lower) else lower)


def detectable_difference(sd: float, n: int, level: float = ALPHA) -> float:
    """The smallest mean difference that the paired t-test at ``level`` with ``n`` seeds finds with probability
    :data:`POWER`, given the paired differences' standard deviation ``sd``; NaN below 2 seeds."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    if power(_LARGEST_SIZE, n, level) < POWER:
        return math.inf
    size = optimize.brentq(lambda es: power(es, n, level) - POWER, 1e-9, _LARGEST_SIZE, xtol=1e-10)
    return size * sd


_LARGEST_SIZE = 1e3  # standard deviations: the largest effect size detectable_difference looks at


#: The largest number of seeds :func:`seeds_needed` looks for.
MAX_SEEDS = 1000


def seeds_needed(effect: float, sd: float, level: float = ALPHA) -> int | None:
    """Roughly how many paired seeds the observed ``effect`` would need to be found with probability
    :data:`POWER` at ``level``, were the standard deviation ``sd`` the true one; None when the effect is 0 or
    would need more than :data:`MAX_SEEDS`."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return None
    if sd == 0:
        return 2
    size = abs(effect) / sd
    if power(size, MAX_SEEDS, level) < POWER:
        return None
    low, high = 2, MAX_SEEDS  # the power grows with the seeds: bisect for the first n that reaches POWER
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if power(size, middle, level) < POWER else (low, middle)
    return low
