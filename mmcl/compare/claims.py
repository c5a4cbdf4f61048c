"""Verdicts on a study's claims: supported, not supported or inconclusive at this budget, with the effect and
its 95% interval. A study lists its claims; each kind reads the records only:

* ``better``: ``loss`` scores higher than ``than`` (``metric``: ``value``, the task's primary score, or a record
  field such as ``representation.backbone.effective_rank``), per modality: the paired differences over every
  (task, seed) of the modality, their mean and t interval. Supported when the interval lies above 0, not
  supported when it lies below, inconclusive otherwise.
* ``smaller_drop``: each of ``losses`` loses less of its score than each of ``than`` from the first to the last
  task of each group in ``groups`` (e.g. batch 256 to batch 16): per seed, ``drop(than) - drop(loss)``; the same
  interval rule.
* ``bound``: the monitored loss ``lower`` stays at or below ``upper`` along training (``train.monitor_losses``),
  per task: the fraction of logged steps of every run where it holds, with its Clopper-Pearson interval.
  Supported when it holds at every logged step, not supported when it fails at most of them, inconclusive
  (it holds at some) otherwise.
"""

from __future__ import annotations

import math
from collections import defaultdict

from mmcl.compare.analysis import TaskInfo, values_by_loss
from mmcl.compare.records import CellRecord
from mmcl.compare.statistics import binomial_interval, summarize


def verdicts(claims: list[dict], records: list[CellRecord], infos: list[TaskInfo]) -> list[dict]:
    """One row per claim and group: ``claim``, ``group``, ``effect``, ``ci``, ``n``, ``verdict``."""
    out = []
    for claim in claims:
        kind = claim.get("kind")
        if kind not in _KINDS:
            raise ValueError(f"claim kind {kind!r} is not one of {sorted(_KINDS)}")
        out.extend(_KINDS[kind](claim, records, infos))
    return out


def _interval_verdict(effect_ci: tuple[float, float]) -> str:
    low, high = effect_ci
    if math.isnan(low):
        return "inconclusive (too few seeds)"
    if low > 0:
        return "supported"
    if high < 0:
        return "not supported (the opposite holds)"
    return "inconclusive at this budget"


def _better(claim: dict, records: list[CellRecord], infos: list[TaskInfo]) -> list[dict]:
    metric = claim.get("metric", "value")
    groups: dict[str, list[float]] = defaultdict(list)
    for info in infos:
        values = values_by_loss(records, info.task, metric)
        a, b = values.get(claim["loss"], {}), values.get(claim["than"], {})
        groups[info.modality].extend(a[s] - b[s] for s in sorted(set(a) & set(b)))
    text = claim.get("text") or f"{claim['loss']} > {claim['than']} on {metric}"
    rows = []
    for modality, differences in groups.items():
        summary = summarize(differences)
        rows.append({"claim": text, "group": modality, "effect": summary.mean, "ci": summary.ci, "n": summary.n,
                     "verdict": _interval_verdict(summary.ci)})  # fmt: skip
    return rows


def _smaller_drop(claim: dict, records: list[CellRecord], infos: list[TaskInfo]) -> list[dict]:
    metric = claim.get("metric", "value")
    rows = []
    for group, tasks in claim["groups"].items():
        first, last = values_by_loss(records, tasks[0], metric), values_by_loss(records, tasks[-1], metric)
        for loss in claim["losses"]:
            for other in claim["than"]:
                mine, theirs = _drop(first, last, loss), _drop(first, last, other)
                summary = summarize([theirs[s] - mine[s] for s in sorted(set(mine) & set(theirs))])
                rows.append({
                    "claim": f"{loss} loses less {metric} than {other} from {tasks[0]} to {tasks[-1]}",
                    "group": group, "effect": summary.mean, "ci": summary.ci, "n": summary.n,
                    "verdict": _interval_verdict(summary.ci),
                })  # fmt: skip
    return rows


def _drop(first: dict, last: dict, loss: str) -> dict[int, float]:
    """Per seed, how much of its score ``loss`` loses from the first task to the last."""
    a, b = first.get(loss, {}), last.get(loss, {})
    return {s: a[s] - b[s] for s in set(a) & set(b)}


def _bound(claim: dict, records: list[CellRecord], infos: list[TaskInfo]) -> list[dict]:
    lower, upper = claim["lower"], claim["upper"]
    rows = []
    for info in infos:
        held = total = 0
        for record in records:
            if record.task == info.task and record.ok:
                for line in record.curves:
                    if lower in line and upper in line:
                        total += 1
                        held += line[lower] <= line[upper]
        if total == 0:
            continue
        fraction = held / total
        verdict = (
            "supported"
            if held == total
            else "not supported"
            if fraction < 0.5
            else "inconclusive (holds at some steps)"
        )
        text = claim.get("text") or f"{lower} <= {upper} along training"
        interval = binomial_interval(held, total)
        rows.append({"claim": text, "group": info.task, "effect": fraction, "ci": interval, "n": total,
                     "verdict": verdict})  # fmt: skip
    return rows


_KINDS = {"better": _better, "smaller_drop": _smaller_drop, "bound": _bound}
_REQUIRED = {"better": ("loss", "than"), "smaller_drop": ("losses", "than", "groups"), "bound": ("lower", "upper")}


def check_claims(claims: list, losses: list[str], tasks: list[str]) -> None:
    """Refuse a claim of an unknown kind, without its keys, or naming a loss label or task the study lacks."""
    for i, claim in enumerate(claims):
        kind = claim.get("kind") if isinstance(claim, dict) else None
        if kind not in _KINDS:
            raise ValueError(f"claims[{i}]: kind must be one of {sorted(_KINDS)}, got {kind!r}")
        missing = [key for key in _REQUIRED[kind] if key not in claim]
        if missing:
            raise ValueError(f"claims[{i}] ({kind}) needs {missing}")
        named = [claim.get("loss"), *([claim["than"]] if isinstance(claim.get("than"), str) else claim.get("than", [])),
                 *claim.get("losses", [])]  # fmt: skip
        unknown = [label for label in named if label is not None and label not in losses]
        if unknown:
            raise ValueError(f"claims[{i}] ({kind}) names loss label(s) {unknown} the study lacks; labels: {losses}")
        grouped = [task for group in claim.get("groups", {}).values() for task in group]
        if any(task not in tasks for task in grouped):
            raise ValueError(f"claims[{i}] ({kind}) groups name tasks the study lacks; tasks: {tasks}")
