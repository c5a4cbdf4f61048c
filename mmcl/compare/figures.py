"""Figures with matplotlib, each saved as PNG and SVG: the helpers every figure uses, and ``mmcl plot RUN [RUN ...]``'s
training curves of runs (:func:`plot_runs`). A study's figures are in :mod:`mmcl.compare.study_figures`.
"""

from __future__ import annotations

import math
from pathlib import Path

from mmcl.runs.files import METRICS
from mmcl.runs.results import read_metrics, trained_evaluations

#: The training curves drawn: (key in metrics.jsonl, axis title).
CURVES = (
    ("loss", "training loss"),
    ("pos_cos_mean", "positive cosine"),
    ("neg_cos_mean", "negative cosine"),
    ("tau", "effective temperature"),
    ("lr", "learning rate"),
)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ---------------------------------------------------------------- runs (mmcl plot)


def _run_metrics(run_dir: Path) -> list[dict]:
    metrics = read_metrics(run_dir)
    if not metrics:
        raise FileNotFoundError(f"{run_dir} has no {METRICS}: is it a run folder?")
    return metrics


def plot_runs(run_dirs: list[Path], output: Path, name: str = "runs") -> list[Path]:
    """Training curves (loss, cosines, temperature, learning rate, monitored losses) of one or several runs, and
    their evaluation scores where ``eval.json`` has them."""
    curves = {Path(run).name: _run_metrics(run) for run in run_dirs}
    keys = [k for k, _ in CURVES if any(k in r for lines in curves.values() for r in lines)]
    keys += sorted({k for lines in curves.values() for r in lines for k in r if k.startswith(("monitor/", "val_"))})
    titles = dict(CURVES)
    figure, axes = grid(len(keys) + 1)
    for axis, key in zip(axes, keys):
        for label, lines in curves.items():
            points = [(r["step"], r[key]) for r in lines if key in r]
            if points:
                axis.plot(*zip(*points), label=label)
        axis.set_title(titles.get(key, key))
        axis.set_xlabel("step")
    axes[0].legend(fontsize=7)
    _scores_panel(axes[-1], run_dirs)
    return save(figure, output, name)


def _scores_panel(axis, run_dirs: list[Path]) -> None:
    """Each run's headline evaluation scores (latest evaluated checkpoint), or a note when none was evaluated."""
    rows = []
    for run in run_dirs:
        trained = trained_evaluations(run)
        if trained:
            results = trained[sorted(trained)[-1]]
            for task, result in results.items():
                for key in ("top1", "accuracy", "avg"):
                    if isinstance(result.get(key), (int, float)):
                        rows.append((f"{Path(run).name}\n{task}.{key}", result[key]))
    axis.set_title("evaluation")
    if not rows:
        axis.text(0.5, 0.5, "not evaluated", ha="center", va="center")
        axis.set_axis_off()
        return
    labels, values = zip(*rows)
    axis.barh(range(len(values)), values)
    axis.set_yticks(range(len(values)), labels, fontsize=6)
    for i, value in enumerate(values):
        axis.text(value, i, f" {value:.2f}", va="center", fontsize=6)
