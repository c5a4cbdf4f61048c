"""The tuning part of a tuned study's report, from ``trials.jsonl`` and the records alone: per task, each loss's
search (trials complete, pruned and failed; the selected trial, its validation score and options), tuned and
untuned entries of one loss side by side, and what the pruner saved; and two figures per task, validation score
against each searched option (sensitivity) and the best validation score so far against trials (budget), so that a
reader sees whether the budget sufficed.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from mmcl.compare.analysis import TaskInfo, values_by_loss
from mmcl.compare.records import CellRecord
from mmcl.compare.statistics import paired

TRIALS_FILE = "trials.jsonl"


def read_trials(*folders: Path) -> list[dict]:
    """Every trial of the folders' searches (``trials.jsonl``), in order; empty for an untuned study."""
    trials = []
    for folder in folders:
        path = Path(folder) / TRIALS_FILE
        if path.is_file():
            trials += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return trials


def tuning_section(trials: list[dict], records: list[CellRecord], infos: list[TaskInfo]) -> list[str]:
    """The report's "Tuning" section (empty without trials)."""
    if not trials:
        return []
    intro = (
        "Each loss got the same number of trials per task; each trial trained once and was scored on validation data "
        "only, never on the test split, which the final cells read once at the selected options. Selected: the best "
        "validation score (the earliest trial among equals); under nested cross-validation each outer fold selects "
        "its own trial, and the row names the one most folds chose (the final cells' own run) and each fold's."
    )
    lines = ["## Tuning", "", intro, ""]
    for info in infos:
        mine = [t for t in trials if t["task"] == info.task]
        if mine:
            lines += _task_tuning(info, mine, records)
    return lines + _pruning_lines(trials)


def _task_tuning(info: TaskInfo, trials: list[dict], records: list[CellRecord]) -> list[str]:
    lines = [f"### {info.task}", "", f"Validation: {trials[0]['split'].removeprefix('validation: ')}.", "",
             "| loss | trials (complete / pruned / failed) | selected trial | validation | selected options |",
             "|---|---|---|---|---|"]  # fmt: skip
    for loss, searched in _by_loss(trials).items():
        states = [t["state"] for t in searched]
        counts = " / ".join(str(states.count(state)) for state in ("complete", "pruned", "fail"))
        best = selected(searched, records)
        if best is None:
            lines.append(f"| {loss} | {len(searched)} ({counts}) | none finished | | |")
            continue
        chosen = ", ".join(f"{key.split('.', 1)[1]}={_value(value)}" for key, value in best["options"].items())
        folds = f" (outer folds: {', '.join(map(str, best['folds']))})" if best["folds"] else ""
        lines.append(f"| {loss} | {len(searched)} ({counts}) | {best['trial']}{folds} | {best['value']:.2f} | "
                     f"{chosen} |")  # fmt: skip
    return lines + [""] + _side_by_side(info, trials, records)


def selected(trials: list[dict], records: list[CellRecord] = ()) -> dict | None:
    """The trial of one search (``trials``) that its final cells ran at, as their records say (under nested
    cross-validation the trial most outer folds chose; ``folds``: each fold's), else, before they ran, the best
    validation score of its complete trials, the earliest among equals (:meth:`mmcl.compare.search.Search.selection`
    chose it so)."""
    task, loss = trials[0]["task"], trials[0]["loss"]
    tuned = next((r.tuned for r in records if r.task == task and r.loss == loss and r.tuned), None)
    if tuned is not None:
        trial = next(t for t in trials if t["trial"] == tuned["selected_trial"])
        return {**trial, "folds": [fold["trial"] for fold in tuned.get("per_fold") or []]}
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    return {**max(complete, key=lambda t: (t["value"], -t["trial"])), "folds": []} if complete else None


def _side_by_side(info: TaskInfo, trials: list[dict], records: list[CellRecord]) -> list[str]:
    """Tuned and untuned entries of the same loss (``tune: false``): their test scores, paired by seed."""
    tuned = set(_by_loss(trials))
    mine = [r for r in records if r.task == info.task and r.ok]
    names = {r.loss: r.loss_name for r in mine}
    pairs = [(a, b) for a in sorted(tuned) for b in sorted(set(names) - tuned) if names.get(a) == names.get(b)]
    if not pairs:
        return []
    values = values_by_loss(mine, info.task)
    lines = ["Tuned vs. the study's defaults (test scores, paired by seed):", "",
             "| tuned | default | mean tuned | mean default | difference [95% interval] | p |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for a, b in pairs:
        comparison = paired(values.get(a, {}), values.get(b, {}))
        low, high = comparison.diff.ci
        lines.append(f"| {a} | {b} | {_mean(values.get(a))} | {_mean(values.get(b))} | {comparison.diff.mean:+.2f} "
                     f"[{low:+.2f}, {high:+.2f}] | {_p(comparison.p)} |")  # fmt: skip
    return lines + [""]


def _pruning_lines(trials: list[dict]) -> list[str]:
    """What the pruner saved: the training steps pruned trials did not run, as a share of the searches' steps."""
    pruned = [t for t in trials if t["state"] == "pruned"]
    if not pruned:
        return []
    full = defaultdict(int)
    for trial in trials:
        full[trial["task"]] = max(full[trial["task"]], trial.get("steps") or 0)
    planned = sum(full[t["task"]] for t in trials)
    saved = sum(full[t["task"]] - (t.get("steps") or 0) for t in pruned)
    share = 100 * saved / planned if planned else math.nan
    return [f"The pruner stopped {len(pruned)} of {len(trials)} trials early: {saved} of the searches' {planned} "
            f"training steps were not run ({share:.0f}%).", ""]  # fmt: skip


def _by_loss(trials: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for trial in trials:
        out[trial["loss"]].append(trial)
    return dict(out)


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _mean(values: dict | None) -> str:
    return f"{sum(values.values()) / len(values):.2f}" if values else "n/a"


def _p(value: float) -> str:
    return "" if value is None or math.isnan(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


# ---------------------------------------------------------------- figures


def tuning_figures(
    trials: list[dict], records: list[CellRecord], infos: list[TaskInfo], folder: Path
) -> dict[str, list[Path]]:
    """``{"tuning_sensitivity": [png, svg], "tuning_budget": [png, svg]}`` (empty without trials)."""
    tasks = [info.task for info in infos if any(t["task"] == info.task for t in trials)]
    if not tasks:
        return {}
    return {
        "tuning_sensitivity": _sensitivity(trials, records, tasks, folder),
        "tuning_budget": _budget(trials, tasks, folder),
    }


def _sensitivity(trials: list[dict], records: list[CellRecord], tasks: list[str], folder: Path) -> list[Path]:
    """Per task and searched option: each scored trial's validation score against the option's value, one marker
    colour per loss, the selected trial ringed."""
    from mmcl.compare.figures import grid, save

    panels = [(task, option) for task in tasks
              for option in dict.fromkeys(k for t in trials if t["task"] == task for k in t["options"])]  # fmt: skip
    figure, axes = grid(len(panels))
    for axis, (task, option) in zip(axes, panels):
        for index, (loss, searched) in enumerate(_by_loss([t for t in trials if t["task"] == task]).items()):
            for state, marker in (("complete", "o"), ("pruned", "x")):
                points = [(t["options"][option], t["value"]) for t in searched
                          if t["state"] == state and option in t["options"] and t["value"] is not None]  # fmt: skip
                if points:
                    label = loss if state == "complete" else f"{loss} (pruned: last score)"
                    axis.scatter(*zip(*points), label=label, color=f"C{index}", marker=marker, s=18)
            best = selected(searched, records)
            if best is not None and option in best["options"]:
                axis.scatter([best["options"][option]], [best["value"]], s=120, facecolors="none",
                             edgecolors=f"C{index}", linewidths=1.5)  # fmt: skip
        values = [t["options"][option] for t in trials if t["task"] == task and option in t["options"]]
        if values and all(isinstance(v, (int, float)) and v > 0 for v in values) and max(values) > 10 * min(values):
            axis.set_xscale("log")
        axis.set_xlabel(option)
        axis.set_ylabel("validation score")
        axis.set_title(f"{task}: {option} (ringed: selected)", fontsize=9)
        axis.legend(fontsize=7)
    return save(figure, folder, "tuning_sensitivity")


def _budget(trials: list[dict], tasks: list[str], folder: Path) -> list[Path]:
    """Per task, the best validation score so far against the trials spent, one line per loss: a curve still
    rising at the end says the budget was short."""
    from matplotlib.ticker import MaxNLocator

    from mmcl.compare.figures import grid, save

    figure, axes = grid(len(tasks))
    for axis, task in zip(axes, tasks):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        for loss, searched in _by_loss([t for t in trials if t["task"] == task]).items():
            best, curve = -math.inf, []
            for trial in sorted(searched, key=lambda t: t["trial"]):
                if trial["state"] == "complete" and trial["value"] is not None:
                    best = max(best, trial["value"])
                curve.append(best if best > -math.inf else math.nan)
            axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=loss)
        axis.set_xlabel("trials")
        axis.set_ylabel("best validation score so far")
        axis.set_title(task, fontsize=9)
        axis.legend(fontsize=7)
    return save(figure, folder, "tuning_budget")
