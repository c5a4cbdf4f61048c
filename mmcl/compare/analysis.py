"""From cell records to the tables of a comparison: per task, each loss's summary, its paired difference to the
baseline (Holm-corrected across losses), whether it is distinguishable from the best, its rank and its cost; and
the mean ranks per modality and over all tasks. Everything is recomputed from the records alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from mmcl.compare.records import RANDOM_INIT, CellRecord
from mmcl.compare.statistics import ALPHA, Paired, Summary, holm, paired, ranks, summarize


@dataclass(frozen=True)
class Row:
    """One loss on one task."""

    task: str
    loss: str
    values: dict[int, float]  # seed -> primary value
    summary: Summary
    vs_baseline: Paired | None
    p_holm: float  # the baseline comparison's p-value, Holm-corrected across the task's losses
    vs_best: Paired | None
    same_as_best: bool  # not significantly different from the best (Holm-corrected), or the best itself
    best: bool
    rank: float  # NaN for the random-init row, which is not ranked
    cost: dict[str, float]  # mean train_seconds, eval_seconds, peak_memory_mb


@dataclass(frozen=True)
class TaskInfo:
    task: str
    modality: str
    dataset: str
    metric: str
    protocol: str


def task_infos(records: list[CellRecord]) -> list[TaskInfo]:
    """The tasks of the records, in the order they first appear."""
    seen: dict[str, TaskInfo] = {}
    for r in records:
        seen.setdefault(r.task, TaskInfo(r.task, r.modality, r.dataset, r.metric, r.protocol))
    return list(seen.values())


def values_by_loss(records: list[CellRecord], task: str, key: str = "value") -> dict[str, dict[int, float]]:
    """``{loss: {seed: value}}`` of a task's successful cells (``key``: a record field or ``scores.x``)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.task == task and r.ok:
            value = r.lookup(key)
            if isinstance(value, (int, float)):
                out[r.loss][r.seed] = float(value)
    return dict(out)


def task_table(records: list[CellRecord], task: str, losses: list[str], baseline: str | None) -> list[Row]:
    """The rows of one task, in the order of ``losses`` (the random-init row first when present)."""
    values = values_by_loss(records, task)
    trained = [loss for loss in losses if loss != RANDOM_INIT]
    means = {loss: summarize(list(values.get(loss, {}).values())).mean for loss in trained}
    order = ranks(means)
    best = min(order, key=order.get) if any(not math.isnan(m) for m in means.values()) else None
    vs_baseline = {loss: paired(values.get(loss, {}), values[baseline])
                   for loss in trained if baseline in values and loss != baseline}  # fmt: skip
    adjusted = dict(zip(vs_baseline, holm([c.p for c in vs_baseline.values()])))
    vs_best = {loss: paired(values.get(loss, {}), values[best]) for loss in trained if best and loss != best}
    best_adjusted = dict(zip(vs_best, holm([c.p for c in vs_best.values()])))
    rows = []
    for loss in losses:
        seeds = values.get(loss, {})
        rows.append(Row(
            task=task, loss=loss, values=seeds, summary=summarize(list(seeds.values())),
            vs_baseline=vs_baseline.get(loss), p_holm=adjusted.get(loss, math.nan), vs_best=vs_best.get(loss),
            same_as_best=loss == best or not (best_adjusted.get(loss, math.nan) < ALPHA),
            best=loss == best, rank=order.get(loss, math.nan), cost=_cost(records, task, loss),
        ))  # fmt: skip
    return rows


def _cost(records: list[CellRecord], task: str, loss: str) -> dict[str, float]:
    mine = [r for r in records if r.task == task and r.loss == loss and r.ok]
    return {key: summarize([float(getattr(r, key) or 0.0) for r in mine]).mean
            for key in ("train_seconds", "eval_seconds", "peak_memory_mb")}  # fmt: skip


def mean_ranks(tables: dict[str, list[Row]], infos: list[TaskInfo]) -> dict[str, dict[str, float]]:
    """``{loss: {modality: mean rank, ..., "all": mean rank}}`` over the tasks where the loss has a value."""
    modality = {info.task: info.modality for info in infos}
    collected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task, rows in tables.items():
        for row in rows:
            if not math.isnan(row.rank) and row.values:
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
