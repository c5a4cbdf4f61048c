"""The figures of a study report (``mmcl compare``): scores with confidence intervals, the differences to the
baseline as a heatmap, performance profiles of the normalised scores (Agarwal et al. 2021), the
alignment-uniformity plane per modality (Wang & Isola 2020), effective rank against score, training curves with
seed bands, and the cost of each cell. Each ``draw_*`` function returns its matplotlib
figure; :func:`study_figures` saves them (the rules every figure follows: :mod:`mmcl.compare.figures`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmcl.compare.aggregates import Normalised, performance_profile
from mmcl.compare.analysis import Row, TaskInfo, TaskTable
from mmcl.compare.figures import CURVES, TICK_SIZE, draw_curve, grid, pyplot, save, step_axis
from mmcl.compare.records import RANDOM_INIT, CellRecord

#: Below this many seeds a 95% interval is marked: from two values its t factor is 12.7, so it is very wide.
FEW_SEEDS = 3
_MARKERS = "os^vD<>pP*hX"


def study_figures(records: list[CellRecord], tables: dict[str, TaskTable], infos: list[TaskInfo], baseline: str | None,
                  folder: Path, normalised: list[Normalised] = ()) -> dict[str, list[Path]]:  # fmt: skip
    """Every figure of a study report: ``{figure name: [png, svg]}``."""
    drawn = draw_study_figures(records, tables, infos, baseline, normalised)
    return {name: save(figure, folder, name) for name, figure in drawn}


def draw_study_figures(records: list[CellRecord], tables: dict[str, TaskTable], infos: list[TaskInfo],
                       baseline: str | None, normalised: list[Normalised] = ()):  # fmt: skip
    """``(name, figure)`` of every figure of a study report, one at a time (each is closed when saved)."""
    yield "scores", draw_scores(tables, infos)
    ordered = [info for group in _by_modality(infos).values() for info in group]
    yield "alignment_uniformity", draw_scatter(records, ordered, "backbone.alignment", "backbone.uniformity",
                                               ("alignment (backbone)", "uniformity (backbone)"))  # fmt: skip
    yield "rank_vs_score", draw_rank_vs_score(records, infos)
    yield "cost", draw_cost(tables, infos)
    if baseline:
        yield "baseline_differences", draw_baseline_heatmap(tables, infos, baseline)
    if any(n.left_out is None for n in normalised):
        yield "performance_profiles", draw_performance_profiles(normalised, infos)
    if any(r.curves for r in records):
        yield "training_curves", draw_training_curves(records, infos)


def draw_scores(tables: dict[str, TaskTable], infos: list[TaskInfo]):
    """Each loss's mean score with its 95% confidence interval and its seeds, one panel per task; the random-init
    encoder as a dashed line (or, far from the losses, in the panel's title); one legend for all panels."""
    figure, axes = grid(len(infos))
    for axis, info in zip(axes, infos):
        rows = [row for row in tables[info.task].rows if row.loss != RANDOM_INIT and row.values]
        for i, row in enumerate(rows):
            _interval(axis, i, row)
            seeds = list(row.values.values())
            offsets = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
            axis.plot(i + offsets, seeds, "o", markersize=5, color="black", alpha=0.6, zorder=3,
                      label="one seed" if i == 0 else None)  # fmt: skip
        axis.set_title(f"{info.task} ({info.modality})", fontsize=9)
        random_init = next((r for r in tables[info.task].rows if r.loss == RANDOM_INIT and r.values), None)
        if random_init is not None:
            _random_init_line(axis, random_init.summary.mean)
        axis.set_xticks(range(len(rows)), [row.loss for row in rows], rotation=45, ha="right")
        axis.set_xlabel("loss")
        axis.set_ylabel(info.metric)
    _figure_legend(figure, axes)
    return figure


def _interval(axis, x: float, row: Row) -> None:
    """The mean and its 95% interval; one from fewer than :data:`FEW_SEEDS` seeds dashed and marked ``n=2``."""
    mean, (low, high), n = row.summary.mean, row.summary.ci, row.summary.n
    known = not (math.isnan(low) or math.isnan(high))
    error = [[mean - low], [high - mean]] if known else None
    few = n < FEW_SEEDS
    drawn = axis.errorbar([x], [mean], yerr=error, fmt="o", markersize=7, capsize=4, color="tab:blue", zorder=2,
                          label=None if x else "mean, 95% interval")  # fmt: skip
    if few:
        for bar in drawn[2]:
            bar.set_linestyle("--")
        axis.annotate(f"n={n}" + ("" if known else ", no interval"), (x, mean), xytext=(7, 0), va="center",
                      textcoords="offset points", fontsize=TICK_SIZE, color="tab:red")  # fmt: skip


def _random_init_line(axis, value: float) -> None:
    """The random-init score as a dashed line where it lies near the losses' scores; far below or above them (more
    than their own range away), in the panel's title, so that the losses' differences stay visible."""
    low, high = axis.get_ylim()
    if low - (high - low) <= value <= high + (high - low):
        axis.axhline(value, linestyle="--", color="grey", label="random init")
        return
    axis.set_title(f"{axis.get_title()}; random init {value:.2f} ({'below' if value < low else 'above'})", fontsize=9)


def draw_baseline_heatmap(tables: dict[str, TaskTable], infos: list[TaskInfo], baseline: str):
    """Mean paired difference to the baseline, losses x tasks, with Holm-corrected significance marks."""
    plt = pyplot()
    losses = [row.loss for row in tables[infos[0].task].rows if row.loss not in (RANDOM_INIT, baseline)]
    grid_values = np.full((len(losses), len(infos)), np.nan)
    marks = [["" for _ in infos] for _ in losses]
    for j, info in enumerate(infos):
        for row in tables[info.task].rows:
            if row.loss in losses and row.vs_baseline is not None:
                i = losses.index(row.loss)
                p = row.vs_baseline.p_holm
                grid_values[i, j] = row.vs_baseline.paired.diff.mean
                marks[i][j] = "**" if p < 0.01 else "*" if p < 0.05 else ""
    size = (max(6.5, 1.4 * len(infos) + 3), max(3.2, 0.5 * len(losses) + 1.8))  # room for the title and colour bar
    figure, axis = plt.subplots(figsize=size, layout="constrained")
    limit = np.nanmax(np.abs(grid_values)) if np.isfinite(grid_values).any() else 1.0
    image = axis.imshow(grid_values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(losses)):
        for j in range(len(infos)):
            if not np.isnan(grid_values[i, j]):
                colour = "white" if abs(grid_values[i, j]) > 0.6 * limit else "black"
                axis.text(j, i, f"{grid_values[i, j]:+.2f}{marks[i][j]}", ha="center", va="center", fontsize=TICK_SIZE,
                          color=colour)  # fmt: skip
    axis.set_xticks(range(len(infos)), [info.task for info in infos], rotation=30, ha="right")
    axis.set_yticks(range(len(losses)), losses)
    axis.set_xlabel("task")
    axis.set_ylabel("loss")
    axis.set_title(f"difference to {baseline} (paired by seed; * p<0.05, ** p<0.01, Holm)", fontsize=9)
    figure.colorbar(image, ax=axis, label=f"mean difference to {baseline}")
    return figure


def draw_performance_profiles(normalised: list[Normalised], infos: list[TaskInfo]):
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
        axis.legend(fontsize=8)
    return figure


def _by_modality(infos: list[TaskInfo]) -> dict[str, list[TaskInfo]]:
    groups: dict[str, list[TaskInfo]] = defaultdict(list)
    for info in infos:
        groups[info.modality].append(info)
    return groups


def draw_scatter(records: list[CellRecord], infos: list[TaskInfo], x_key: str, y_key: str, titles: tuple[str, str]):
    """One panel per task: a point per run at (x, y), coloured by its score (the colour bar), a marker per loss, the
    same in every panel (one legend, in black and white: its colours are not scores)."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    figure, axes = grid(len(infos), width=5.2)
    markers = {loss: _MARKERS[k % len(_MARKERS)] for k, loss in enumerate(dict.fromkeys(r.loss for r in records))}
    for axis, info in zip(axes, infos):
        points = [(r, r.representation.get(x_key), r.representation.get(y_key))
                  for r in records if r.task == info.task and r.ok]  # fmt: skip
        points = [(r, x, y) for r, x, y in points if isinstance(x, float) and isinstance(y, float)]
        if not points:
            axis.set_visible(False)  # no representation metrics for this task: no panel
            continue
        values = [r.value for r, _, _ in points]
        norm = plt.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
        for loss in dict.fromkeys(r.loss for r, _, _ in points):
            xs, ys, cs = zip(*[(x, y, r.value) for r, x, y in points if r.loss == loss])
            scatter = axis.scatter(xs, ys, c=cs, cmap="viridis", norm=norm, marker=markers[loss], s=40,
                                   edgecolors="black", linewidths=0.4)  # fmt: skip
        figure.colorbar(scatter, ax=axis, label=f"{info.metric} (colour)")
        axis.set_xlabel(titles[0])
        axis.set_ylabel(titles[1])
        axis.set_title(f"{info.task} ({info.modality})", fontsize=9)
    handles = [Line2D([], [], marker=marker, linestyle="", markerfacecolor="white", markeredgecolor="black",
                      label=loss) for loss, marker in markers.items()]  # fmt: skip
    figure.legend(handles=handles, title="loss (marker)", loc="outside lower center", ncol=min(len(handles), 8))
    return figure


def draw_rank_vs_score(records: list[CellRecord], infos: list[TaskInfo]):
    """Effective rank of the backbone features against the score; a loss has the same colour in every panel."""
    figure, axes = grid(len(infos))
    colours = _colours(records)
    for axis, info in zip(axes, infos):
        mine = [r for r in records if r.task == info.task and r.ok]
        for loss in dict.fromkeys(r.loss for r in mine):
            pairs = [(r.representation.get("backbone.effective_rank"), r.value)
                     for r in mine if r.loss == loss]  # fmt: skip
            pairs = [(x, y) for x, y in pairs if isinstance(x, float)]
            if pairs:
                axis.scatter(*zip(*pairs), label=loss, color=colours[loss])
        if not axis.collections:
            axis.set_visible(False)  # no effective rank recorded for this task: no panel
            continue
        axis.set_xlabel("effective rank (backbone)")
        axis.set_ylabel(info.metric)
        axis.set_title(f"{info.task} ({info.modality})", fontsize=9)
    _figure_legend(figure, axes)
    return figure


def _colours(records: list[CellRecord]) -> dict[str, str]:
    """One colour per loss (its label), the same in every panel of a figure."""
    return {loss: f"C{k % 10}" for k, loss in enumerate(dict.fromkeys(r.loss for r in records))}


def _figure_legend(figure, axes) -> None:
    """One legend below the panels, of every label they draw."""
    handles = {label: handle for axis in axes for handle, label in zip(*axis.get_legend_handles_labels())}
    if handles:
        figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 8))


def draw_training_curves(records: list[CellRecord], infos: list[TaskInfo]):
    """Per task (a row), the mean training curve of each loss over its seeds with a one-standard-deviation band; a
    loss has the same colour in every panel (one legend)."""
    keys = [(key, title) for key, title in CURVES[:4]]
    monitored = sorted({k for r in records for line in r.curves for k in line if k.startswith("monitor/")})
    keys += [(key, key) for key in monitored]
    trained = [info for info in infos if any(r.curves for r in records if r.task == info.task)]
    plt = pyplot()
    figure, axes = plt.subplots(len(trained), len(keys), figsize=(3.6 * len(keys), 2.8 * len(trained)),
                                squeeze=False, layout="constrained")  # fmt: skip
    colours = _colours(records)
    for row_axes, info in zip(axes, trained):
        last_step = max(line["step"] for r in records if r.task == info.task for line in r.curves)
        for axis, (key, title) in zip(row_axes, keys):
            series = _curves_by_loss(records, info.task, key)
            axis.set_visible(bool(series))  # a monitored loss of another task: no panel
            for loss, (steps, mean, std) in series.items():
                draw_curve(axis, steps, mean, loss, spread=std, color=colours[loss])
            axis.set_title(info.task, fontsize=9)
            axis.set_ylabel(title)
            step_axis(axis, last_step)
    _figure_legend(figure, axes.flat)
    return figure


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


def draw_cost(tables: dict[str, TaskTable], infos: list[TaskInfo]):
    """Mean training and evaluation seconds, and peak memory, of each loss's cells per task."""
    plt = pyplot()
    labels, train, evaluation, memory = [], [], [], []
    for info in infos:
        for row in tables[info.task].rows:
            if row.values:
                labels.append(f"{info.task} / {row.loss}")
                train.append(row.cost["train_seconds"])
                evaluation.append(row.cost["eval_seconds"])
                memory.append(row.cost["peak_memory_mb"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 0.3 * len(labels) + 1.5), sharey=True, layout="constrained")
    y = np.arange(len(labels))
    axes[0].barh(y, train, label="train")
    axes[0].barh(y, evaluation, left=train, label="evaluation")
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()  # the tasks in the report's order, top to bottom
    axes[0].set_ylabel("task / loss")
    axes[0].set_xlabel("seconds per cell (mean over seeds)")
    axes[0].legend()
    axes[1].barh(y, memory, color="tab:green")
    axes[1].set_xlabel("peak memory per cell (MiB)")
    return figure
