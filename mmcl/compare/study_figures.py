"""The figures of a study report (``mmcl compare``): scores with confidence intervals, the differences to the
baseline as a heatmap, performance profiles of the normalised scores (Agarwal et al. 2021), the
alignment-uniformity plane per modality (Wang & Isola 2020), effective rank against score, training curves with
seed bands, and the cost of each cell.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmcl.compare.aggregates import Normalised, performance_profile
from mmcl.compare.analysis import TaskInfo, TaskTable
from mmcl.compare.figures import CURVES, grid, pyplot, save
from mmcl.compare.records import RANDOM_INIT, CellRecord


def study_figures(
    records: list[CellRecord],
    tables: dict[str, TaskTable],
    infos: list[TaskInfo],
    baseline: str | None,
    folder: Path,
    normalised: list[Normalised],
) -> dict[str, list[Path]]:
    """Every figure of a study report: ``{figure name: [png, svg]}``."""
    figures = {
        "scores": scores_figure(tables, infos, folder),
        "alignment_uniformity": alignment_uniformity_figure(records, infos, folder),
        "rank_vs_score": rank_vs_score_figure(records, infos, folder),
        "cost": cost_figure(tables, infos, folder),
    }
    if baseline:
        figures["baseline_differences"] = baseline_heatmap(tables, infos, baseline, folder)
    if any(n.left_out is None for n in normalised):
        figures["performance_profiles"] = performance_profile_figure(normalised, infos, folder)
    if any(r.curves for r in records):
        figures["training_curves"] = training_curves_figure(records, infos, folder)
    return figures


def scores_figure(tables: dict[str, TaskTable], infos: list[TaskInfo], folder: Path) -> list[Path]:
    """Each loss's mean score with its 95% confidence interval, one panel per task; random init dashed."""
    figure, axes = grid(len(infos))
    for axis, info in zip(axes, infos):
        rows = [row for row in tables[info.task].rows if row.loss != RANDOM_INIT and row.values]
        means = [row.summary.mean for row in rows]
        errors = [
            [m - row.summary.ci[0] if not math.isnan(row.summary.ci[0]) else 0 for m, row in zip(means, rows)],
            [row.summary.ci[1] - m if not math.isnan(row.summary.ci[1]) else 0 for m, row in zip(means, rows)],
        ]
        axis.errorbar(range(len(rows)), means, yerr=errors, fmt="o", capsize=3)
        for i, row in enumerate(rows):
            axis.plot([i] * len(row.values), list(row.values.values()), ".", color="grey", alpha=0.5)
        baseline = next((r for r in tables[info.task].rows if r.loss == RANDOM_INIT and r.values), None)
        if baseline is not None:
            axis.axhline(baseline.summary.mean, linestyle="--", color="grey", label="random init")
            axis.legend(fontsize=7)
        axis.set_xticks(range(len(rows)), [row.loss for row in rows], rotation=45, ha="right", fontsize=8)
        axis.set_title(f"{info.task}: {info.metric}", fontsize=9)
    return save(figure, folder, "scores")


def baseline_heatmap(tables: dict[str, TaskTable], infos: list[TaskInfo], baseline: str, folder: Path) -> list[Path]:
    """Mean paired difference to the baseline, losses x tasks, with Holm-corrected significance marks."""
    plt = pyplot()
    losses = [row.loss for row in tables[infos[0].task].rows if row.loss not in (RANDOM_INIT, baseline)]
    grid = np.full((len(losses), len(infos)), np.nan)
    marks = [["" for _ in infos] for _ in losses]
    for j, info in enumerate(infos):
        for row in tables[info.task].rows:
            if row.loss in losses and row.vs_baseline is not None:
                i, p = losses.index(row.loss), row.vs_baseline.p_holm
                grid[i, j] = row.vs_baseline.paired.diff.mean
                marks[i][j] = "**" if p < 0.01 else "*" if p < 0.05 else ""
    figure, axis = plt.subplots(figsize=(1.4 * len(infos) + 2.5, 0.5 * len(losses) + 1.8), layout="constrained")
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    image = axis.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(losses)):
        for j in range(len(infos)):
            if not np.isnan(grid[i, j]):
                colour = "white" if abs(grid[i, j]) > 0.6 * limit else "black"
                axis.text(j, i, f"{grid[i, j]:+.2f}{marks[i][j]}", ha="center", va="center", fontsize=8, color=colour)
    axis.set_xticks(range(len(infos)), [info.task for info in infos], rotation=30, ha="right")
    axis.set_yticks(range(len(losses)), losses)
    axis.set_title(f"difference to {baseline} (paired by seed; * p<0.05, ** p<0.01, Holm)", fontsize=9)
    figure.colorbar(image, ax=axis)
    return save(figure, folder, "baseline_differences")


def _by_modality(infos: list[TaskInfo]) -> dict[str, list[TaskInfo]]:
    groups: dict[str, list[TaskInfo]] = defaultdict(list)
    for info in infos:
        groups[info.modality].append(info)
    return groups


def _scatter(records: list[CellRecord], infos: list[TaskInfo], x_key: str, y_key: str, folder: Path, name: str,
             titles: tuple[str, str]) -> list[Path]:  # fmt: skip
    """One panel per task: a point per run at (x, y), coloured by its score, a marker per loss."""
    plt = pyplot()
    figure, axes = grid(len(infos), width=5.2)
    markers = "os^vD<>pP*hX"
    for axis, info in zip(axes, infos):
        mine = [r for r in records if r.task == info.task and r.ok]
        points = [(r, r.representation.get(x_key), r.representation.get(y_key))
                  for r in mine]  # fmt: skip
        points = [(r, x, y) for r, x, y in points if isinstance(x, float) and isinstance(y, float)]
        if not points:
            axis.set_title(f"{info.task}: no representation metrics", fontsize=9)
            continue
        values = [r.value for r, _, _ in points]
        norm = plt.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
        losses = list(dict.fromkeys(r.loss for r, _, _ in points))
        for k, loss in enumerate(losses):
            chosen = [(x, y, r.value) for r, x, y in points if r.loss == loss]
            xs, ys, cs = zip(*chosen)
            scatter = axis.scatter(xs, ys, c=cs, cmap="viridis", norm=norm, marker=markers[k % len(markers)],
                                   label=loss, edgecolors="black", linewidths=0.3)  # fmt: skip
        figure.colorbar(scatter, ax=axis, label=info.metric)
        axis.set_xlabel(titles[0])
        axis.set_ylabel(titles[1])
        axis.set_title(f"{info.task} ({info.modality})", fontsize=9)
        axis.legend(fontsize=6)
    return save(figure, folder, name)


def alignment_uniformity_figure(records: list[CellRecord], infos: list[TaskInfo], folder: Path) -> list[Path]:
    """Alignment against uniformity of the backbone features (lower is better on both), tasks grouped by modality."""
    ordered = [info for group in _by_modality(infos).values() for info in group]
    return _scatter(records, ordered, "backbone.alignment", "backbone.uniformity", folder, "alignment_uniformity",
                    ("alignment (backbone)", "uniformity (backbone)"))  # fmt: skip


def rank_vs_score_figure(records: list[CellRecord], infos: list[TaskInfo], folder: Path) -> list[Path]:
    """Effective rank of the backbone features against the score."""
    figure, axes = grid(len(infos))
    for axis, info in zip(axes, infos):
        mine = [r for r in records if r.task == info.task and r.ok]
        for loss in dict.fromkeys(r.loss for r in mine):
            pairs = [(r.representation.get("backbone.effective_rank"), r.value)
                     for r in mine if r.loss == loss]  # fmt: skip
            pairs = [(x, y) for x, y in pairs if isinstance(x, float)]
            if pairs:
                axis.scatter(*zip(*pairs), label=loss)
        axis.set_xlabel("effective rank (backbone)")
        axis.set_ylabel(info.metric)
        axis.set_title(info.task, fontsize=9)
        axis.legend(fontsize=6)
    return save(figure, folder, "rank_vs_score")


def training_curves_figure(records: list[CellRecord], infos: list[TaskInfo], folder: Path) -> list[Path]:
    """Per task, the mean training curve of each loss over its seeds with a one-standard-deviation band."""
    keys = [(key, title) for key, title in CURVES[:4]]
    monitored = sorted({k for r in records for line in r.curves for k in line if k.startswith("monitor/")})
    keys += [(key, key) for key in monitored]
    trained = [info for info in infos if any(r.curves for r in records if r.task == info.task)]
    plt = pyplot()
    figure, axes = plt.subplots(len(trained), len(keys), figsize=(3.6 * len(keys), 2.8 * len(trained)),
                                squeeze=False, layout="constrained")  # fmt: skip
    for row_axes, info in zip(axes, trained):
        for axis, (key, title) in zip(row_axes, keys):
            series = _curves_by_loss(records, info.task, key)
            axis.set_visible(bool(series))  # a monitored loss of another task: no panel
            for loss, (steps, mean, std) in series.items():
                axis.plot(steps, mean, label=loss)
                axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
            axis.set_title(f"{info.task}: {title}", fontsize=8)
            axis.set_xlabel("step", fontsize=7)
        row_axes[0].legend(fontsize=6)
    return save(figure, folder, "training_curves")


Curve = tuple[np.ndarray, np.ndarray, np.ndarray]  # steps, mean, standard deviation


def _curves_by_loss(records: list[CellRecord], task: str, key: str) -> dict[str, Curve]:
    """``{loss: (steps, mean, std)}`` over the seeds, at the steps every seed logged."""
    series: dict[str, list[dict[int, float]]] = defaultdict(list)
    for r in records:
        if r.task == task and r.ok and r.curves:
            series[r.loss].append({line["step"]: line[key] for line in r.curves if key in line})
    out = {}
    for loss, runs in series.items():
        steps = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
        if steps:
            values = np.array([[run[s] for s in steps] for run in runs], dtype=np.float64)
            out[loss] = (np.array(steps), values.mean(0), values.std(0))
    return out


def cost_figure(tables: dict[str, TaskTable], infos: list[TaskInfo], folder: Path) -> list[Path]:
    """Mean training and evaluation seconds, and peak memory, of each loss's cells per task."""
    plt = pyplot()
    figure, axes = plt.subplots(
        1, 2, figsize=(12, 0.35 * sum(len(t.rows) for t in tables.values()) + 2), layout="constrained"
    )
    labels, train, evaluation, memory = [], [], [], []
    for info in infos:
        for row in tables[info.task].rows:
            if row.values:
                labels.append(f"{info.task} / {row.loss}")
                train.append(row.cost["train_seconds"])
                evaluation.append(row.cost["eval_seconds"])
                memory.append(row.cost["peak_memory_mb"])
    y = np.arange(len(labels))
    axes[0].barh(y, train, label="train")
    axes[0].barh(y, evaluation, left=train, label="evaluation")
    axes[0].set_yticks(y, labels, fontsize=6)
    axes[0].set_xlabel("seconds per cell (mean over seeds)")
    axes[0].legend(fontsize=7)
    axes[1].barh(y, memory)
    axes[1].set_yticks(y, labels, fontsize=6)
    axes[1].set_xlabel("peak memory per cell (MiB)")
    return save(figure, folder, "cost")


def performance_profile_figure(normalised: list[Normalised], infos: list[TaskInfo], folder: Path) -> list[Path]:
    """Per modality and over all tasks: the fraction of each loss's runs above each normalised score (averaged over
    the tasks), the losses with a result on every task of the panel."""
    usable = [n for n in normalised if n.left_out is None]
    modality = {info.task: info.modality for info in infos}
    panels = {group: [n for n in usable if modality[n.task] == group] for group in dict.fromkeys(modality.values())}
    panels = {group: tasks for group, tasks in panels.items() if tasks}
    if len(panels) > 1:
        panels["all tasks"] = usable
    scores = np.concatenate([x for n in usable for x in n.runs.values()])
    thresholds = np.linspace(min(0.0, scores.min()), max(1.0, scores.max()), 201)
    figure, axes = grid(len(panels))
    for axis, (group, tasks) in zip(axes, panels.items()):
        for loss in [loss for loss in tasks[0].runs if all(loss in n.runs for n in tasks)]:
            axis.plot(thresholds, performance_profile([n.runs[loss] for n in tasks], thresholds), label=loss)
        axis.set_xlabel("normalised score tau (0: reference, 1: best mean)")
        axis.set_ylabel("fraction of runs with score > tau")
        axis.set_title(f"{group} ({len(tasks)} task(s))", fontsize=9)
        axis.legend(fontsize=6)
    return save(figure, folder, "performance_profiles")
