"""From cell records to the tables of a comparison: per task, each loss's summary, its paired differences to the
best loss and to the baseline (each set of comparisons one Holm family), what each comparison could detect with
its seeds, ranks and cost; the gaps; and the mean ranks per modality and over all tasks. Everything is recomputed
from the records alone.

A gap is never a result: a failed cell, a NaN or missing value drops that seed (listed under the task's table); a
loss left with fewer than two values has no interval, no test and no rank, is never the best nor "not
distinguishable" from it, and its row says why. The untrained (``random_init``) row is evaluated, never ranked.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from mmcl.compare.records import RANDOM_INIT, CellRecord
from mmcl.compare.statistics import (
    ALPHA,
    Paired,
    Summary,
    detectable_difference,
    holm,
    paired,
    ranks,
    seeds_needed,
    summarize,
)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of a loss to another (the best, or the baseline) within its Holm family."""

    paired: Paired  # this loss minus the other
    p_holm: float
    family: int  # the comparisons in the Holm family
    detectable: float  # the smallest difference found with statistics.POWER at ALPHA / family, these seeds
    seeds_needed: int | None  # an inconclusive one: seeds the observed effect would need at that level

    @property
    def distinguishable(self) -> bool:
        return self.p_holm < ALPHA


@dataclass(frozen=True)
class Row:
    """One loss on one task."""

    task: str
    loss: str
    values: dict[int, float]  # seed -> finite primary value
    summary: Summary
    untrained: bool  # the random-init row: evaluated, never ranked or compared
    gap: str | None  # why a trained loss has no rank and no test (fewer than two values)
    vs_best: Comparison | None
    vs_baseline: Comparison | None
    best: bool  # the best mean, or tied with it
    rank: float  # NaN when not ranked
    cost: dict[str, float]  # mean train_seconds, eval_seconds, peak_memory_mb

    @property
    def ranked(self) -> bool:
        return not self.untrained and self.gap is None

    @property
    def standing(self) -> str:
        """Where the loss stands against the best: best, not distinguishable, below, or why it cannot say."""
        if self.untrained:
            return "untrained"
        if self.gap is not None:
            return f"n/a: {self.gap}"
        if self.best:
            return "best"
        if self.vs_best is None:
            return "n/a: fewer than two seeds paired with the best"
        return "below the best" if self.vs_best.distinguishable else "not distinguishable from the best"

    @property
    def same_as_best(self) -> bool | None:
        """The best or not distinguishable from it; None where the row cannot say (untrained, a gap)."""
        if not self.ranked or (not self.best and self.vs_best is None):
            return None
        return self.best or not self.vs_best.distinguishable


@dataclass(frozen=True)
class TaskInfo:
    task: str
    modality: str
    dataset: str
    metric: str
    protocol: str


@dataclass(frozen=True)
class TaskTable:
    info: TaskInfo
    rows: list[Row]
    gaps: list[str]  # every cell that gave no value, and why
    notes: list[str]  # comparisons that could not be made, and why
    coarse: bool = False  # every value a multiple of COARSE: ties and zero spreads may be the rounding's


#: The resolution below which a task's values are flagged as coarse (sentence scores were once stored rounded to it).
COARSE = 0.01


def task_infos(records: list[CellRecord], order: list[str] | None = None) -> list[TaskInfo]:
    """The tasks of the records, in ``order`` (the study's), else in the order they first appear."""
    seen: dict[str, TaskInfo] = {}
    for r in records:
        seen.setdefault(r.task, TaskInfo(r.task, r.modality, r.dataset, r.metric, r.protocol))
    position = {task: i for i, task in enumerate(order or [])}
    return sorted(seen.values(), key=lambda info: position.get(info.task, len(position)))


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def values_by_loss(records: list[CellRecord], task: str, key: str = "value") -> dict[str, dict[int, float]]:
    """``{loss: {seed: value}}`` of a task's successful cells with a finite value at ``key`` (a record field or a
    dotted key such as ``scores.knn.top1``)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.task == task and r.ok and is_number(r.lookup(key)):
            out[r.loss][r.seed] = float(r.lookup(key))
    return dict(out)


def cell_gaps(records: list[CellRecord], task: str, losses: list[str], seeds: list[int],
              unreadable: frozenset[str] = frozenset()) -> list[str]:  # fmt: skip
    """Each (loss, seed) of the task without a finite primary value, and why (``unreadable``: the ids of cells
    whose record could not be read)."""
    by_cell = {(r.loss, r.seed): r for r in records if r.task == task}
    gaps = []
    for loss in losses:
        for seed in seeds:
            record = by_cell.get((loss, seed))
            if record is None and f"{task}/{loss}/seed{seed}" in unreadable:
                reason = "its record is unreadable (listed below the tables)"
            elif record is None:
                reason = "no record (not run yet)"
            elif not record.ok:
                reason = f"failed: {(record.error or 'no error recorded').splitlines()[0][:160]}"
            elif not is_number(record.value):
                reason = f"its value is {record.value!r}, not a finite number"
            else:
                continue
            gaps.append(f"{task}/{loss}/seed{seed}: {reason}")
    return gaps


def task_table(records: list[CellRecord], info: TaskInfo, losses: list[str], baseline: str | None,
               seeds: list[int], unreadable: frozenset[str] = frozenset()) -> TaskTable:  # fmt: skip
    """The rows of one task, in the order of ``losses`` (the random-init row first when present)."""
    values = values_by_loss(records, info.task)
    values = {loss: values.get(loss, {}) for loss in losses}
    gaps = {loss: _row_gap(values[loss]) for loss in losses if loss != RANDOM_INIT}
    ranked = [loss for loss, gap in gaps.items() if gap is None]
    order = ranks({loss: summarize(list(values[loss].values())).mean for loss in ranked})
    best = [loss for loss in ranked if order[loss] == min(order.values())]
    notes: list[str] = []
    vs_best = _family({loss: paired(values[loss], values[best[0]]) for loss in ranked if loss not in best}, notes,
                      f"with the best ({best[0]})" if best else "")  # fmt: skip
    vs_baseline: dict[str, Comparison] = {}
    if baseline in ranked:
        pairs = {loss: paired(values[loss], values[baseline]) for loss in ranked if loss != baseline}
        vs_baseline = _family(pairs, notes, f"with the baseline ({baseline})")
    elif baseline is not None:
        notes.append(f"no differences to the baseline: {baseline} has {gaps.get(baseline) or 'no result'}")
    rows = [Row(
        task=info.task, loss=loss, values=values[loss], summary=summarize(list(values[loss].values())),
        untrained=loss == RANDOM_INIT, gap=gaps.get(loss), vs_best=vs_best.get(loss),
        vs_baseline=vs_baseline.get(loss), best=loss in best, rank=order.get(loss, math.nan),
        cost=_cost(records, info.task, loss),
    ) for loss in losses]  # fmt: skip
    every = [value for seeds in values.values() for value in seeds.values()]
    coarse = len(every) > 1 and all(abs(v / COARSE - round(v / COARSE)) < 1e-6 for v in every)
    return TaskTable(info, rows, cell_gaps(records, info.task, losses, seeds, unreadable), notes, coarse)


def _row_gap(values: dict[int, float]) -> str | None:
    if not values:
        return "no result"
    if len(values) == 1:
        (seed,) = values
        return f"one seed (seed {seed}): no spread, no interval, no test"
    return None


def _family(pairs: dict[str, Paired], notes: list[str], partner: str) -> dict[str, Comparison]:
    """The testable comparisons (two paired seeds or more) as one Holm family; the others noted."""
    testable = {loss: c for loss, c in pairs.items() if not math.isnan(c.p)}
    for loss in [loss for loss in pairs if loss not in testable]:
        notes.append(f"{loss}: {len(pairs[loss].seeds)} seed(s) paired {partner}: no test")
    adjusted = dict(zip(testable, holm([c.p for c in testable.values()])))
    level = ALPHA / max(1, len(testable))  # Holm's strictest step
    out = {}
    for loss, c in testable.items():
        diff = c.diff
        needed = None if adjusted[loss] < ALPHA else seeds_needed(diff.mean, diff.std, level)
        out[loss] = Comparison(c, adjusted[loss], len(testable), detectable_difference(diff.std, diff.n, level), needed)
    return out


def _cost(records: list[CellRecord], task: str, loss: str) -> dict[str, float]:
    mine = [r for r in records if r.task == task and r.loss == loss and r.ok]
    return {key: summarize([float(getattr(r, key) or 0.0) for r in mine]).mean
            for key in ("train_seconds", "eval_seconds", "peak_memory_mb")}  # fmt: skip


def mean_ranks(tables: dict[str, TaskTable], infos: list[TaskInfo]) -> dict[str, dict[str, float]]:
    """``{loss: {modality: mean rank, ..., "all": mean rank}}`` over the tasks where the loss is ranked."""
    modality = {info.task: info.modality for info in infos}
    collected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task, table in tables.items():
        for row in table.rows:
            if row.ranked:
                collected[row.loss][modality[task]].append(row.rank)
                collected[row.loss]["all"].append(row.rank)
    return {loss: {group: sum(r) / len(r) for group, r in groups.items()} for loss, groups in collected.items()}


def loss_order(records: list[CellRecord], study: dict | None) -> list[str]:
    """The losses in the study's order (random-init first), else in the order of the records."""
    if study:
        labels = [str(e) if isinstance(e, str) else str(e.get("label", e["name"])) for e in study.get("losses", [])]
        return ([RANDOM_INIT] if study.get("random_init") else []) + labels
    return list(dict.fromkeys(sorted(r.loss for r in records if r.loss == RANDOM_INIT) +
                              [r.loss for r in records if r.loss != RANDOM_INIT]))  # fmt: skip
