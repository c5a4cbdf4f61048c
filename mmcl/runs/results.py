"""What a run folder records of its results, and the one reader of each: ``metrics.jsonl`` (one line per logged
step) and ``eval.json`` (every evaluation, per encoder and task, merged)."""

from __future__ import annotations

import json
from pathlib import Path

from mmcl.runs.files import evaluations_file, metrics_file, write_atomically
from mmcl.runs.lock import exclusive

#: ``eval.json``'s key of a freshly initialised encoder's results (the baseline every trained run is shown beside).
RANDOM_INIT = "random_init"
#: ``eval.json``'s key of a config's encoder evaluated without training (e.g. a published model).
AS_BUILT = "as_built"


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (loss, learning rate, diagnostics per logged step); empty when none."""
    path = metrics_file(run_dir)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the ``metrics.jsonl`` records up to ``step``: a resume from there writes the later steps again."""
    path = metrics_file(run_dir)
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            write_atomically(path, "".join(line + "\n" for line in kept))


def record_evaluation(run_dir: Path, encoder: str, task: str, result: dict) -> Path:
    """Merge one task's result into ``RUN/eval.json`` under ``encoder`` (a checkpoint's name, ``random_init`` or
    ``as_built``), keeping every other result."""
    path = evaluations_file(run_dir)
    with exclusive(Path(run_dir) / ".eval.lock"):
        results = read_evaluations(run_dir)
        results.setdefault(encoder, {})[task] = result
        write_atomically(path, json.dumps(results, indent=2) + "\n")
    return path


def read_evaluations(run_dir: Path) -> dict:
    """``{encoder: {task: result}}`` of ``RUN/eval.json`` (empty when nothing was evaluated)."""
    path = evaluations_file(run_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def trained_evaluations(run_dir: Path) -> dict:
    """The evaluations of trained checkpoints only (not ``random_init`` nor ``as_built``), by checkpoint name."""
    return {key: tasks for key, tasks in read_evaluations(run_dir).items() if key not in (RANDOM_INIT, AS_BUILT)}
