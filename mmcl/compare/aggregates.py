"""Aggregates across tasks, as Agarwal et al. (2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", NeurIPS; the rliable library) report many methods over many tasks with few seeds:

* **normalised scores**: per task, ``(score - reference) / (best - reference)``, the reference being the mean of the
  study's ``reference`` row (default: ``random_init``) and the best the best loss's mean on the task, so that 0 is
  the reference and 1 the best mean; a task where no loss beats the reference is left out, with the reason;
* per loss, the **mean** of its per-task means of normalised scores (each task weighted equally) and the
  **interquartile mean** (IQM, ``scipy.stats.trim_mean(runs, 0.25)``: the mean of the middle half of its runs
  pooled over the tasks), robust to one task's outlying runs;
* the **probability of improvement** of a loss over the baseline: per task, the Mann-Whitney U statistic over the
  pairs of their runs divided by their number (a tie counts a half), averaged over the tasks;
* 95% **stratified-bootstrap** percentile intervals of each: the runs (seeds) are resampled with replacement
  within each task, each task keeping its number of runs;
* **performance profiles**: the fraction of a loss's runs above each normalised score, averaged over the tasks.

Written here rather than imported because rliable 1.2 imports ``arch``, whose 7.2 release fails to import with
current pandas. The resampler is a seeded numpy one (:data:`BOOTSTRAP_SEED`, :data:`BOOTSTRAP_RESAMPLES`) rather
than ``scipy.stats.bootstrap``: the statistics pool strata of different sizes (tasks, and two losses' runs for
the probability of improvement) and one vectorised draw per stratum computes them directly; the percentile
interval is rliable's, where scipy's default (BCa) breaks down on strata of two or three runs that are often
equal; and scipy changed the keyword of its generator in 1.15, which mmcl's scipy range spans. The tests check
the intervals against ``scipy.stats.bootstrap(method="percentile")``. Every interval is reproducible: each is
drawn from a fresh generator with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mmcl.compare.analysis import Row, TaskInfo, TaskTable
from mmcl.compare.statistics import ALPHA

BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000
#: The share of runs cut at each end by the interquartile mean.
IQM_CUT = 0.25


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% stratified-bootstrap percentile interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Normalised:
    """A task's normalised runs: ``{loss: scores}`` of the losses with a result there, or why the task is out."""

    task: str
    reference: float  # the reference row's mean
    best: float  # the best loss's mean
    runs: dict[str, np.ndarray]
    left_out: str | None = None


@dataclass(frozen=True)
class Aggregate:
    """One loss over a group of tasks (a modality, or all tasks)."""

    group: str
    loss: str
    tasks: tuple[str, ...]
    runs: int
    mean: Interval | None
    iqm: Interval | None
    improvement: Interval | None  # P(loss > baseline); None for the baseline itself or without one
    gap: str | None = None  # why the loss has no aggregate over the group


def normalise(rows: list[Row], reference: str) -> Normalised:
    """One task's runs normalised by its ``reference`` row's mean and its best loss's mean."""
    task = rows[0].task
    anchor = next((row for row in rows if row.loss == reference and row.values), None)
    best = next((row for row in rows if row.best), None)
    if anchor is None or best is None:
        missing = f"no {reference} result" if anchor is None else "no loss with two seeds or more"
        return Normalised(task, math.nan, math.nan, {}, f"{task}: {missing}")
    low, high = anchor.summary.mean, best.summary.mean
    if not high > low:
        return Normalised(task, low, high, {}, f"{task}: no loss beats {reference} ({high:.2f} <= {low:.2f})")
    runs = {row.loss: (np.array(list(row.values.values())) - low) / (high - low) for row in rows if row.ranked}
    return Normalised(task, low, high, runs)


def aggregate_table(tables: dict[str, TaskTable], infos: list[TaskInfo], reference: str | None,
                    baseline: str | None) -> tuple[list[Aggregate], list[Normalised]]:  # fmt: skip
    """Every trained loss's aggregates per modality and over all tasks (when there are several modalities), and
    each task's normalisation (none without a ``reference``: then only the probability of improvement)."""
    normalised = {info.task: normalise(tables[info.task].rows, reference) for info in infos} if reference else {}
    groups: dict[str, list[str]] = {}
    for info in infos:
        groups.setdefault(info.modality, []).append(info.task)
    if len(groups) > 1:
        groups["all tasks"] = [info.task for info in infos]
    rows = {task: {row.loss: row for row in table.rows} for task, table in tables.items()}
    losses = [row.loss for row in tables[infos[0].task].rows if not row.untrained]
    out = [_aggregate(group, loss, {task: rows[task] for task in tasks}, normalised, baseline)
           for group, tasks in groups.items() for loss in losses]  # fmt: skip
    return out, list(normalised.values())


def _aggregate(group: str, loss: str, rows: dict[str, dict[str, Row]], normalised: dict[str, Normalised],
               baseline: str | None) -> Aggregate:  # fmt: skip
    """One loss over the tasks of ``rows`` (``{task: {loss: row}}``)."""
    missing = [task for task, by_loss in rows.items() if not by_loss[loss].ranked]
    if missing:
        return Aggregate(group, loss, (), 0, None, None, None, f"fewer than two seeds with a result on {missing}")
    improvement = None
    if baseline not in (None, loss) and all(by_loss[baseline].ranked for by_loss in rows.values()):
        improvement = probability_of_improvement([_runs(by_loss[loss]) for by_loss in rows.values()],
                                                 [_runs(by_loss[baseline]) for by_loss in rows.values()])  # fmt: skip
    usable = [normalised[task] for task in rows if task in normalised and normalised[task].left_out is None]
    if not usable:  # no normalised scores: the probability of improvement reads every task's raw scores
        return Aggregate(group, loss, tuple(rows), sum(len(r[loss].values) for r in rows.values()), None, None,
                         improvement)  # fmt: skip
    strata = [task.runs[loss] for task in usable]
    return Aggregate(group, loss, tuple(task.task for task in usable), sum(len(x) for x in strata),
                     interval(strata, mean_of_means), interval(strata, iqm), improvement)  # fmt: skip


def _runs(row: Row) -> np.ndarray:
    return np.array(list(row.values.values()), dtype=np.float64)


# ---------------------------------------------------------------- the statistics, vectorised over resamples

Statistic = Callable[[list[np.ndarray]], np.ndarray]  # per-stratum arrays (resamples, runs) -> (resamples,)


def mean_of_means(strata: list[np.ndarray]) -> np.ndarray:
    """The mean over the tasks of each task's mean: every task weighs the same."""
    return np.mean([x.mean(axis=-1) for x in strata], axis=0)


def iqm(strata: list[np.ndarray]) -> np.ndarray:
    """The interquartile mean of the runs pooled over the tasks (rliable's ``aggregate_iqm``)."""
    return stats.trim_mean(np.concatenate(strata, axis=-1), IQM_CUT, axis=-1)


def interval(strata: list[np.ndarray], statistic: Statistic) -> Interval:
    """The statistic of the strata and its 95% stratified-bootstrap percentile interval."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = [_resample(x, rng) for x in strata]
    return _interval(float(statistic(strata)), statistic(resampled))


def probability_of_improvement(x: list[np.ndarray], y: list[np.ndarray]) -> Interval:
    """P(a run of X scores above a run of Y on the same task), averaged over the tasks, with its interval (each
    task's runs of X and of Y resampled independently)."""

    def statistic(strata: list[np.ndarray]) -> np.ndarray:
        half = len(strata) // 2
        return np.mean([_u_share(a, b) for a, b in zip(strata[:half], strata[half:])], axis=0)

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = [_resample(s, rng) for s in [*x, *y]]
    return _interval(float(statistic([*x, *y])), statistic(resampled))


def _u_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mann-Whitney's U of ``a`` over ``b`` divided by ``len(a) * len(b)``, along the last axis."""
    greater = (a[..., :, None] > b[..., None, :]).mean(axis=(-2, -1))
    ties = (a[..., :, None] == b[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * ties


def _resample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))]


def _interval(value: float, resampled: np.ndarray) -> Interval:
    low, high = np.percentile(resampled, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return Interval(value, float(low), float(high))


def performance_profile(strata: list[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    """The fraction of runs with a normalised score above each threshold, per task, averaged over the tasks."""
    return np.mean([(x[:, None] > thresholds[None, :]).mean(axis=0) for x in strata], axis=0)
