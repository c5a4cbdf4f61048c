"""Figures with matplotlib, each saved as PNG and SVG: the helpers every figure uses, and ``mmcl plot RUN [RUN ...]``'s
training curves of runs (:func:`plot_runs`). A study's figures are in :mod:`mmcl.compare.study_figures`.

Every figure follows the same rules (``tests/test_compare.py`` checks them on the matplotlib objects): every axis that
shows data is labelled, no panel is drawn empty, a curve of a single logged step is a marker on a step axis that
starts at 0, tick labels are at least :data:`TICK_SIZE` points and colour bars say what their colour means.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from mmcl.runs.files import METRICS
from mmcl.runs.results import RANDOM_INIT, read_evaluations, read_metrics, trained_evaluations

#: The training curves drawn: (key in metrics.jsonl, axis label).
CURVES = (
    ("loss", "training loss"),
    ("pos_cos_mean", "positive cosine"),
    ("neg_cos_mean", "negative cosine"),
    ("tau", "effective temperature"),
    ("lr", "learning rate"),
)
#: The smallest font of tick labels and legends, in points (readable at the PNG's size).
TICK_SIZE = 8
#: Curves with fewer points than this get a marker on each point (one point is no line).
MARKED_POINTS = 5


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"xtick.labelsize": TICK_SIZE, "ytick.labelsize": TICK_SIZE, "legend.fontsize": TICK_SIZE})
    return plt


def save(figure, folder: Path, name: str) -> list[Path]:
    """``folder/name.png`` and ``folder/name.svg``; the figure is closed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    figure.savefig(paths[0], dpi=110, bbox_inches="tight")
    figure.savefig(paths[1], bbox_inches="tight")
    pyplot().close(figure)
    return paths


def grid(count: int, width: float = 4.2, height: float = 3.2):
    plt = pyplot()
    columns = min(3, max(1, count))
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat[:count])


def draw_curve(axis, steps: Sequence[float], values: Sequence[float], label: str, spread: Sequence[float] = (),
               color: str | None = None) -> None:  # fmt: skip
    """One training curve (with its band of ``spread`` either side, when given); a curve of few points has a marker
    on each, so that a single logged step shows."""
    marker = "o" if len(steps) < MARKED_POINTS else None
    (line,) = axis.plot(steps, values, marker=marker, markersize=4, label=label, color=color)
    if len(spread) and len(steps) > 1:
        axis.fill_between(steps, [v - s for v, s in zip(values, spread)], [v + s for v, s in zip(values, spread)],
                          color=line.get_color(), alpha=0.2)  # fmt: skip
    elif len(spread):
        axis.errorbar(steps, values, yerr=spread, fmt="none", color=line.get_color(), capsize=3)


def step_axis(axis, last_step: float) -> None:
    """A training-step x axis from 0 to just past the last logged step, whole steps only."""
    from matplotlib.ticker import MaxNLocator

    axis.set_xlabel("step")
    axis.set_xlim(0, max(1.0, last_step) * 1.05)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


# ---------------------------------------------------------------- runs (mmcl plot)


def _run_metrics(run_dir: Path) -> list[dict]:
    metrics = read_metrics(run_dir)
    if not metrics:
        raise FileNotFoundError(f"{run_dir} has no {METRICS}: is it a run folder?")
    return metrics


def default_plot_folder(run_dirs: Sequence[Path]) -> Path:
    """Where ``mmcl plot`` writes without ``--output``: ``RUN/plots`` for one run, else ``plots/`` in the folder that
    holds the runs."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "plots"
    try:
        return Path(os.path.commonpath([str(run) for run in run_dirs])) / "plots"
    except ValueError:  # relative and absolute paths mixed
        return Path(os.path.commonpath([str(Path(run).resolve()) for run in run_dirs])) / "plots"


def plot_runs(run_dirs: list[Path], output: Path | None = None, name: str = "runs") -> list[Path]:
    """Training curves (loss, cosines, temperature, learning rate, monitored losses) of one or several runs, and
    their evaluation scores beside the random-init baseline where ``eval.json`` has them; written to ``output``
    (default: :func:`default_plot_folder`)."""
    return save(draw_runs(run_dirs), output or default_plot_folder(run_dirs), name)


def draw_runs(run_dirs: list[Path]):
    """:func:`plot_runs`' figure."""
    curves = {Path(run).name: _run_metrics(run) for run in run_dirs}
    keys = [k for k, _ in CURVES if any(k in r for lines in curves.values() for r in lines)]
    keys += sorted({k for lines in curves.values() for r in lines for k in r if k.startswith(("monitor/", "val_"))})
    labels = dict(CURVES)
    scores = _scores(run_dirs)
    figure, axes = grid(len(keys) + bool(scores))
    last_step = max(r["step"] for lines in curves.values() for r in lines)
    for axis, key in zip(axes, keys):
        for run, lines in curves.items():
            points = [(r["step"], r[key]) for r in lines if key in r]
            if points:
                draw_curve(axis, *zip(*points), label=run)
        axis.set_ylabel(labels.get(key, key))
        step_axis(axis, last_step)
    axes[0].legend()
    if scores:
        _scores_panel(axes[-1], scores)
    else:
        figure.suptitle("not evaluated yet: `mmcl evaluate RUN` adds the scores", fontsize=9)
    return figure


def _scores(run_dirs: list[Path]) -> list[tuple[str, float, float | None]]:
    """``(run: task metric, trained score, random-init score or None)`` of each run's latest evaluated checkpoint,
    at each task's primary score."""
    from mmcl.engine.evaluate import lookup
    from mmcl.tasks import available_tasks, get_task

    rows = []
    for run in run_dirs:
        trained = trained_evaluations(run)
        if not trained:
            continue
        baseline = read_evaluations(run).get(RANDOM_INIT, {})
        for task, result in trained[sorted(trained)[-1]].items():
            metric = get_task(task).primary if task in available_tasks() else None
            value = lookup(result, metric) if metric else None
            if isinstance(value, (int, float)):
                random_init = lookup(baseline.get(task, {}), metric)
                rows.append((f"{Path(run).name}\n{task} {metric}", value, random_init))
    return rows


def _scores_panel(axis, rows: list[tuple[str, float, float | None]]) -> None:
    """Each run's scores as bars, with the random-init encoder's beside them where it was evaluated."""
    labels, trained, baseline = zip(*rows)
    shown = [(i, value) for i, value in enumerate(baseline) if isinstance(value, (int, float))]
    for offset, bars, name, colour in ((-0.2, list(enumerate(trained)), "trained", "tab:blue"),
                                       (0.2, shown, "random init", "grey")):  # fmt: skip
        if bars:
            axis.barh([i + offset for i, _ in bars], [v for _, v in bars], height=0.36, color=colour, label=name)
        for i, value in bars:
            axis.text(value, i + offset, f" {value:.2f}", va="center", fontsize=TICK_SIZE)
    axis.set_yticks(range(len(rows)), labels)
    axis.set_ylim(len(rows) - 0.4, -0.6)  # the first run on top
    axis.set_xlim(0, max([*trained, *(v for _, v in shown)]) * 1.2)
    axis.set_xlabel("score (the task's primary metric)")
    axis.set_ylabel("run, evaluation")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
