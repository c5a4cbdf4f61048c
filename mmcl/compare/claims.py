"""Verdicts on a study's claims: supported, not supported or inconclusive at this budget, with the effect, its 95%
interval and its p-value before and after Holm's correction. A study lists its claims; each kind reads the
records only, and every seed pairs the claimed loss with the other:

* ``better``: ``loss`` scores higher than ``than`` on ``metric`` (default ``value``, the task's primary score; or a
  record field such as ``representation.backbone.effective_rank``). Per task, the paired differences' mean, t
  interval and p (descriptive); per modality, the verdict from the stratified estimate over its tasks
  (:func:`mmcl.compare.statistics.stratified`: each task weighted equally, within-task variances,
  Welch-Satterthwaite degrees of freedom), so that differences between tasks do not count as noise.
* ``at_least``: non-inferiority: ``loss`` scores at least as high as ``than`` up to ``margin`` (in the metric's
  units). The same estimate, tested against ``-margin``: supported when the 95% interval lies above ``-margin``.
* ``smaller_drop``: each of ``losses`` loses less of its score than each of ``than`` from the first to the last
  task of each group in ``groups`` (e.g. batch 256 to batch 16): per seed, ``drop(than) - drop(loss)``.
* ``bound``: the monitored loss ``lower`` stays at or below ``upper`` along training (``train.monitor_losses``
  logs ``monitor/<loss name>``). The unit is the run, not the logged step (a run's steps are not independent
  trials): per run, the fraction of its logged steps where the bound holds; per task and training loss, the share
  of runs where it holds at every step with its Clopper-Pearson interval. Supported when it holds at every step
  of every run; not supported when every run fails at most of its steps; inconclusive otherwise.

The tested rows (the verdicts of ``better``, ``at_least`` and ``smaller_drop``) of all the study's claims are one
Holm family: a verdict is supported or not supported only when its Holm-adjusted p is below 0.05. ``bound``
verdicts have no p-value and are outside the family. A row that cannot be tested (fewer than two paired seeds,
a metric without values there, a bound not logged on a task) says so and is outside the family too.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmcl.compare.analysis import TaskInfo, values_by_loss
from mmcl.compare.records import CellRecord
from mmcl.compare.statistics import ALPHA, binomial_interval, holm, stratified, summarize, t_test


@dataclass(frozen=True)
class ClaimRow:
    """One line of a claim: a task's effect (descriptive), or a verdict."""

    claim: str
    where: str
    effect: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    n: int = 0  # paired seeds (runs for a bound)
    p: float = math.nan
    p_holm: float = math.nan
    verdict: str = ""  # empty on a task's row: the verdict is its modality's row
    tested: bool = False  # a member of the study's Holm family
    null: float = 0.0  # the value tested against: 0, or -margin
    kind: str = ""
    detail: str = ""  # e.g. a bound's fraction of steps per run


def verdicts(claims: list[dict], records: list[CellRecord], infos: list[TaskInfo]) -> list[ClaimRow]:
    """Every claim's rows, with Holm's correction across the tested rows of all of them."""
    rows = [row for claim in claims for row in _KINDS[claim["kind"]](claim, records, infos)]
    tested = [i for i, row in enumerate(rows) if row.tested]
    for i, adjusted in zip(tested, holm([rows[i].p for i in tested])):
        rows[i] = dataclasses.replace(rows[i], p_holm=adjusted, verdict=_verdict(rows[i], adjusted))
    return rows


def holm_family(rows: list[ClaimRow]) -> int:
    return sum(row.tested for row in rows)


def _verdict(row: ClaimRow, p_holm: float) -> str:
    if p_holm >= ALPHA:
        return "inconclusive at this budget"
    if row.effect > row.null:
        return "supported"
    return "not supported (below by more than the margin)" if row.kind == "at_least" else \
        "not supported (the opposite holds)"  # fmt: skip


def _tested(text: str, where: str, samples: list[list[float]], null: float, kind: str) -> ClaimRow:
    estimate = stratified(samples, null)
    return ClaimRow(text, where, estimate.effect, estimate.ci, estimate.n, estimate.p, tested=True, null=null,
                    kind=kind)  # fmt: skip


def _by_modality(infos: list[TaskInfo]) -> dict[str, list[TaskInfo]]:
    groups: dict[str, list[TaskInfo]] = defaultdict(list)
    for info in infos:
        groups[info.modality].append(info)
    return dict(groups)


def _paired_differences(records: list[CellRecord], task: str, metric: str, loss: str, other: str) -> list[float]:
    values = values_by_loss(records, task, metric)
    a, b = values.get(loss, {}), values.get(other, {})
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def _compared(claim: dict, records: list[CellRecord], infos: list[TaskInfo]) -> list[ClaimRow]:
    """``better`` and ``at_least``: per task, then the stratified verdict of each modality."""
    metric, kind = claim.get("metric", "value"), claim["kind"]
    null = -float(claim["margin"]) if kind == "at_least" else 0.0
    relation = f">= {claim['than']} - {claim['margin']}" if kind == "at_least" else f"> {claim['than']}"
    text = claim.get("text") or f"{claim['loss']} {relation} on {metric}"
    rows = []
    for modality, tasks in _by_modality(infos).items():
        samples, names, untested = [], [], []
        for info in tasks:
            d = _paired_differences(records, info.task, metric, claim["loss"], claim["than"])
            if len(d) < 2:
                untested.append(f"{info.task}: {len(d)} paired seed(s) with a {metric} value")
                continue
            samples.append(d)
            names.append(info.task)
            if len(tasks) > 1:
                s = summarize(d)
                rows.append(ClaimRow(text, info.task, s.mean, s.ci, s.n, t_test(np.array(d), null)[1], null=null,
                                     kind=kind))  # fmt: skip
        where = f"{modality} ({', '.join(names)})" + (f"; left out: {'; '.join(untested)}" if untested else "")
        if samples:
            rows.append(_tested(text, where, samples, null, kind))
        else:
            rows.append(ClaimRow(text, modality, verdict=f"n/a: {'; '.join(untested)}", kind=kind))
    return rows


def _smaller_drop(claim: dict, records: list[CellRecord], infos: list[TaskInfo]) -> list[ClaimRow]:
    metric = claim.get("metric", "value")
    rows = []
    for group, tasks in claim["groups"].items():
        first, last = values_by_loss(records, tasks[0], metric), values_by_loss(records, tasks[-1], metric)
        for loss in claim["losses"]:
            for other in claim["than"]:
                mine, theirs = _drop(first, last, loss), _drop(first, last, other)
                d = [theirs[s] - mine[s] for s in sorted(set(mine) & set(theirs))]
                text = f"{loss} loses less {metric} than {other} from {tasks[0]} to {tasks[-1]}"
                if len(d) < 2:
                    rows.append(ClaimRow(text, group, verdict=f"n/a: {len(d)} seed(s) with both drops", n=len(d)))
                else:
                    rows.append(_tested(text, group, [d], 0.0, "smaller_drop"))
    return rows


def _drop(first: dict, last: dict, loss: str) -> dict[int, float]:
    """Per seed, how much of its score ``loss`` loses from the first task to the last."""
    a, b = first.get(loss, {}), last.get(loss, {})
    return {s: a[s] - b[s] for s in set(a) & set(b)}


def _bound(claim: dict, records: list[CellRecord], infos: list[TaskInfo]) -> list[ClaimRow]:
    lower, upper = claim["lower"], claim["upper"]
    text = claim.get("text") or f"{lower} <= {upper} along training"
    rows = []
    for info in infos:
        runs = _bound_runs(records, info.task, lower, upper)
        if not runs:
            rows.append(ClaimRow(text, info.task, verdict=f"n/a: no run of {info.task} logged both {lower} and "
                                                          f"{upper}", kind="bound"))  # fmt: skip
        for loss, fractions in runs.items():
            whole = sum(fraction == 1.0 for fraction in fractions)
            if whole == len(fractions):
                verdict = "supported"
            elif all(fraction < 0.5 for fraction in fractions):
                verdict = "not supported"
            else:
                verdict = f"inconclusive (holds throughout in {whole} of {len(fractions)} runs)"
            rows.append(ClaimRow(text, f"{info.task}, trained with {loss}", whole / len(fractions),
                                 binomial_interval(whole, len(fractions)), len(fractions), verdict=verdict,
                                 kind="bound", detail=", ".join(f"{f:.3f}" for f in fractions)))  # fmt: skip
    return rows


def _bound_runs(records: list[CellRecord], task: str, lower: str, upper: str) -> dict[str, list[float]]:
    """``{training loss: [per run, the fraction of its logged steps where lower <= upper]}`` (by seed)."""
    runs: dict[str, list[float]] = defaultdict(list)
    for record in sorted((r for r in records if r.task == task and r.ok), key=lambda r: r.seed):
        steps = [line for line in record.curves if lower in line and upper in line]
        if steps:
            runs[record.loss].append(sum(line[lower] <= line[upper] for line in steps) / len(steps))
    return dict(runs)


_KINDS: dict[str, Callable[[dict, list[CellRecord], list[TaskInfo]], list[ClaimRow]]] = {
    "better": _compared,
    "at_least": _compared,
    "smaller_drop": _smaller_drop,
    "bound": _bound,
}
_REQUIRED = {"better": ("loss", "than"), "at_least": ("loss", "than", "margin"),
             "smaller_drop": ("losses", "than", "groups"), "bound": ("lower", "upper")}  # fmt: skip
_OPTIONAL = {"better": ("metric", "text"), "at_least": ("metric", "text"), "smaller_drop": ("metric", "text"),
             "bound": ("text",)}  # fmt: skip


# ---------------------------------------------------------------- checks, before any cell runs


def check_claims(claims: list, losses: list[str], tasks: list[str], metrics: dict[str, set[str]] | None = None,
                 curves: dict[str, set[str]] | None = None) -> None:  # fmt: skip
    """Refuse a claim of an unknown kind, with missing or unknown keys, naming a loss label or task the study
    lacks, a metric no task of the claim has, or a bound on curves no task logs. ``metrics``: per task, the
    valid metric keys (a key ending in ``.*`` stands for every key under it); ``curves``: per task, the keys its
    training curves log; either None when not known (a report of stored records: its rows say what is missing)."""
    for i, claim in enumerate(claims):
        kind = claim.get("kind") if isinstance(claim, dict) else None
        if kind not in _KINDS:
            raise ValueError(f"claims[{i}]: kind must be one of {sorted(_KINDS)}, got {kind!r}")
        name = f"claims[{i}] ({kind}{': ' + claim['text'] if claim.get('text') else ''})"
        _check_keys(claim, kind, name)
        _check_labels(claim, name, losses, tasks)
        if kind == "at_least":
            margin = claim["margin"]
            if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < math.inf:
                raise ValueError(f"{name}: margin must be a finite number >= 0 in the metric's units, got {margin!r}")
        claimed = [task for group in claim.get("groups", {}).values() for task in group] or tasks
        if kind == "bound" and curves is not None:
            _check_curves(claim, name, {task: curves.get(task, set()) for task in claimed})
        elif kind != "bound" and metrics is not None:
            _check_metric(claim.get("metric", "value"), name, {task: metrics.get(task, set()) for task in claimed})


def _check_keys(claim: dict, kind: str, name: str) -> None:
    missing = [key for key in _REQUIRED[kind] if key not in claim]
    if missing:
        raise ValueError(f"{name} needs {missing}")
    unknown = sorted(set(claim) - {"kind", *_REQUIRED[kind], *_OPTIONAL[kind]})
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; valid: {['kind', *_REQUIRED[kind], *_OPTIONAL[kind]]}")


def _check_labels(claim: dict, name: str, losses: list[str], tasks: list[str]) -> None:
    than = claim.get("than", [])
    named = [claim.get("loss"), *([than] if isinstance(than, str) else than), *claim.get("losses", [])]
    unknown = [label for label in named if label is not None and label not in losses]
    if unknown:
        raise ValueError(f"{name} names loss label(s) {unknown} the study lacks; labels: {losses}")
    groups = claim.get("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(g, list) and len(g) >= 2 for g in groups.values()):
        raise ValueError(f"{name}: groups must map a name to a list of two tasks or more (first and last compared)")
    if any(task not in tasks for group in groups.values() for task in group):
        raise ValueError(f"{name} groups name tasks the study lacks; tasks: {tasks}")


def _check_metric(metric: str, name: str, valid: dict[str, set[str]]) -> None:
    if not any(_matches(metric, keys) for keys in valid.values()):
        every = sorted(set().union(*valid.values()))
        raise ValueError(f"{name}: metric {metric!r} is not a score of any of its tasks {sorted(valid)}; valid: "
                         f"{every}")  # fmt: skip


def _matches(key: str, keys: set[str]) -> bool:
    return key in keys or any(k.endswith(".*") and key.startswith(k[:-1]) for k in keys)


def _check_curves(claim: dict, name: str, logged: dict[str, set[str]]) -> None:
    pair = (claim["lower"], claim["upper"])
    if not any(set(pair) <= keys for keys in logged.values()):
        every = sorted(set().union(*logged.values()))
        raise ValueError(f"{name}: no task logs both {list(pair)} along training (logged: {every}); monitor a loss "
                         "with the task's train.monitor_losses, which logs monitor/<loss name>")  # fmt: skip
