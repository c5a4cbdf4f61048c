"""What a run folder records of its results, and the one reader of each: ``metrics.jsonl`` (one line per logged
step) and ``eval.json`` (every evaluation, per encoder and task, merged)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmcl.runs.files import evaluations_file, metrics_file, now, write_atomically
from mmcl.runs.lock import exclusive

log = logging.getLogger("mmcl")

#: ``eval.json``'s key of a freshly initialised encoder's results (the baseline every trained run is shown beside).
RANDOM_INIT = "random_init"
#: ``eval.json``'s key of a config's encoder evaluated without training (e.g. a published model).
AS_BUILT = "as_built"


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (loss, learning rate, diagnostics per logged step); empty when none."""
    return [record for _, record in _metric_lines(metrics_file(run_dir))]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the ``metrics.jsonl`` records up to ``step``: a resume from there writes the later steps again."""
    path = metrics_file(run_dir)
    if path.is_file():
        lines = _metric_lines(path)
        kept = [text for text, record in lines if record.get("step", 0) <= step]
        if len(kept) != len(lines) or len(lines) != len(path.read_text().splitlines()):
            write_atomically(path, "".join(text + "\n" for text in kept))


def _metric_lines(path: Path) -> list[tuple[str, dict]]:
    """``(line, record)`` of each line of a metrics file. A last line cut short (what a crash or a full disk
    leaves) is dropped with a note; a damaged line before it is an error naming the file and the line."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(
                    f"{path}, line {number}, is not JSON ({error.msg}): the file was edited or damaged; restore it, "
                    "or delete that line (the run's training state is in its checkpoints)"
                ) from None
            log.warning("note: %s: its last line is cut short (a crash or a full disk while writing); it is dropped",
                        path)  # fmt: skip
    return out


def record_evaluation(run_dir: Path, encoder: str, task: str, result: dict) -> Path:
    """Merge one task's result into ``RUN/eval.json`` under ``encoder`` (a checkpoint's name, ``random_init`` or
    ``as_built``), keeping every other result. A damaged ``eval.json`` is moved aside (named in a warning), never
    overwritten, and the new result is kept in a new one."""
    path = evaluations_file(run_dir)
    with exclusive(Path(run_dir) / ".eval.lock"):
        try:
            results = read_evaluations(run_dir)
        except ValueError as error:
            aside = path.with_name(f"{path.name}.damaged-{now().replace(':', '')}")
            path.rename(aside)
            log.warning("warning: %s; it was moved to %s and the new results start a new %s", error, aside, path.name)
            results = {}
        results.setdefault(encoder, {})[task] = result
        write_atomically(path, json.dumps(results, indent=2) + "\n")
    return path


def read_evaluations(run_dir: Path) -> dict:
    """``{encoder: {task: result}}`` of ``RUN/eval.json`` (empty when nothing was evaluated)."""
    path = evaluations_file(run_dir)
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error})") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path} is damaged (it holds {type(results).__name__}, not evaluations by encoder)")
    return results


def trained_evaluations(run_dir: Path) -> dict:
    """The evaluations of trained checkpoints only (not ``random_init`` nor ``as_built``), by checkpoint name."""
    return {key: tasks for key, tasks in read_evaluations(run_dir).items() if key not in (RANDOM_INIT, AS_BUILT)}
