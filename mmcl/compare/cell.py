"""One cell of a study: pretrain (resuming an interrupted attempt), evaluate, record.

``python -m mmcl.compare.cell SPEC.json`` reads the cell's spec (:class:`~mmcl.compare.records.CellSpec`, written
by the study runner), trains in the cell's run folder with ``train.auto_resume`` (an interrupted cell continues
from its checkpoint; a changed definition is refused), evaluates the task's protocol plus the representation
metrics, and writes the cell's record (:class:`~mmcl.compare.records.CellRecord`) atomically. The executors run
:func:`run_cell_file` in a worker process of their own (:mod:`mmcl.compare.worker`), one cell at a time, so that a
crash stays a cell's; a warm worker runs several cells one after another, each with its peak memory counted
afresh.

The cell validates its config once and builds its loss once: training returns the trained encoder and adapter
(:class:`~mmcl.engine.trainer.Trained`), which the evaluation uses as they are.
"""

from __future__ import annotations

import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmcl.compare.records import CURVE_KEYS, RANDOM_INIT, REPRESENTATION_KEYS, CellRecord, CellSpec
from mmcl.compare.study import with_options
from mmcl.engine.config import Config, config_from_dict
from mmcl.engine.evaluate import evaluate_and_record, evaluate_encoder, evaluate_run, evaluation_device, lookup
from mmcl.logs import configure_logging
from mmcl.runs import RunRecord, library_versions, now, read_metrics, write_atomically
from mmcl.runs.lock import exclusive

if TYPE_CHECKING:
    from mmcl.engine.trainer import Trained


def run_cell(spec: CellSpec) -> CellRecord:
    """Train and evaluate one cell; returns its record (``status`` ``ok`` or ``failed`` with the error)."""
    record = CellRecord.for_cell(spec)
    started = time.perf_counter()
    try:
        config = config_from_dict(spec.raw)
        if spec.loss == RANDOM_INIT:  # the untrained encoder, evaluated in the cell's folder
            trained_at = time.perf_counter()
            results = evaluate_run(config, _tasks(spec), random_init=True)
        elif spec.validation:  # a tuning trial: validation only, never the test split, nothing in eval.json
            trained = _train(config, record, _trial_reporter(spec.trial))
            trained_at = time.perf_counter()
            results = evaluate_encoder(trained.encoder, trained.adapter, config.eval, spec.eval_tasks,
                                       evaluation_device(config), validation=True)  # fmt: skip
            record.folds = _folds(results)
        else:
            trained = _train(config, record)
            trained_at = time.perf_counter()
            results = evaluate_and_record(config, trained.folder, trained.encoder, trained.adapter,
                                          trained.checkpoint, tasks=_tasks(spec))  # fmt: skip
            if spec.tuned and spec.tuned.get("per_fold"):
                results = _nested_cv(spec, results)
        _set_scores(record, results, spec.metric)
        record.eval_seconds = round(time.perf_counter() - trained_at, 2)
        record.status = "ok"
    except Exception as error:  # a cell that fails is recorded with its error and shown as a gap
        record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        record.traceback = traceback.format_exc()
    record.peak_memory_mb = round(_peak_memory_mb(), 1)
    record.seconds = round(time.perf_counter() - started, 2)
    record.versions, record.finished = library_versions(), now()
    return record


def _tasks(spec: CellSpec) -> list[str]:
    """The protocol's tasks and the representation metrics."""
    return list(dict.fromkeys([*spec.eval_tasks, "metrics"]))


def _trial_reporter(trial: dict | None) -> Callable[[int, float], bool] | None:
    """A tuning trial's validation scores go to its Optuna trial (in the study's journal); the answer is its
    pruner's (``should_prune``)."""
    if not trial:
        return None
    import optuna

    from mmcl.compare.search import journal_storage
    from mmcl.compare.tune import build_pruner

    pruner = build_pruner(trial["pruner"], trial["validate_every"], trial["max_steps"])
    study = optuna.load_study(study_name=trial["study"], storage=journal_storage(trial["journal"]), pruner=pruner)
    handle = optuna.trial.Trial(study, trial["trial_id"])

    def report(step: int, score: float) -> bool:
        handle.report(score, step)
        return handle.should_prune()

    return report


def _nested_cv(spec: CellSpec, results: dict) -> dict:
    """Nested cross-validation's final score: each outer fold scored by an encoder trained at the options selected on
    that fold's training part. The cell's own run trained at the options most folds selected (``results``); each
    other selection trains once more, beside it (``seed<k>-trial<n>``), on the same outer split."""
    per_fold, main = spec.tuned["per_fold"], spec.tuned["selected_trial"]
    accuracies = {main: _fold_accuracies(results)}
    for number in dict.fromkeys(fold["trial"] for fold in per_fold if fold["trial"] != main):
        options = next(fold["options"] for fold in per_fold if fold["trial"] == number)
        raw = with_options(spec.raw, options)
        raw["train"]["run_name"] = f"{raw['train']['run_name']}-trial{number}"
        config = config_from_dict(raw)
        trained = _train(config, CellRecord.for_cell(spec))
        extra = evaluate_and_record(config, trained.folder, trained.encoder, trained.adapter, trained.checkpoint,
                                    tasks=["graph_classification"])  # fmt: skip
        accuracies[number] = _fold_accuracies(extra)
    folds = [accuracies[fold["trial"]][k] for k, fold in enumerate(per_fold)]
    task = dict(results["graph_classification"])
    task.update(accuracy=float(np.mean(folds)), std_over_folds=float(np.std(folds)), nested_fold_accuracies=folds,
                nested_trials=[fold["trial"] for fold in per_fold])  # fmt: skip
    return {**results, "graph_classification": task}


def _fold_accuracies(results: dict) -> list[float]:
    return results["graph_classification"]["per_seed"][0]["fold_accuracies"]


def _folds(results: dict) -> dict | None:
    """Nested cross-validation's per-fold scores of a graph classification trial: the validation score of each outer
    fold (its training part's inner cross-validation) and, kept apart for the report, each outer fold's accuracy."""
    result = results.get("graph_classification")
    if not isinstance(result, dict) or not result.get("per_seed"):
        return None
    run = result["per_seed"][0]
    return {"validation": run["fold_validation"], "test": run["fold_accuracies"]}


def _train(config: Config, record: CellRecord, on_validation: Callable[[int, float], bool] | None = None) -> Trained:
    """Train (``train.auto_resume``: an interrupted attempt continues, a changed definition is refused) and fill the
    record's training fields."""
    from mmcl.engine.trainer import train

    started = time.perf_counter()
    trained = train(config, on_validation=on_validation)
    record.train_seconds = round(time.perf_counter() - started, 2)
    record.stopped_early = trained.stopped_early
    metrics = read_metrics(trained.folder)
    record.curves = [
        {key: value for key, value in line.items() if key == "step" or key in CURVE_KEYS or key.startswith("monitor/")}
        for line in metrics
    ]
    last = metrics[-1]
    world_size = RunRecord(trained.folder).last_session().get("world_size", 1)
    record.steps = int(last["step"])
    record.samples_seen = record.steps * config.train.batch_size * world_size * config.train.grad_accumulation
    record.diagnostics = {key: value for key, value in last.items() if key not in ("step", "epoch")}
    return trained


def _set_scores(record: CellRecord, results: dict, metric: str) -> None:
    """The primary value, every headline score (flat, dotted) and the representation metrics of a result."""
    from mmcl.tasks import get_task

    scores = {}
    for name, result in results.items():
        if isinstance(result, dict) and name != "metrics":
            for key in get_task(name).headline:
                value = lookup(result, key)
                if isinstance(value, (int, float)):
                    scores[f"{name}.{key}"] = float(value)
    metrics = results.get("metrics", {})
    representation = {
        name: float(metrics[layer][key])
        for name in REPRESENTATION_KEYS
        for layer, key in [name.split(".")]
        if key in metrics.get(layer, {})
    }
    value = lookup(results, metric)
    if not isinstance(value, (int, float)):
        raise ValueError(f"the evaluation has no number at {metric!r}")
    record.value, record.scores, record.representation = float(value), scores, representation


def _peak_memory_mb() -> float:
    """The cell's peak memory: the GPU's allocator peak when CUDA ran, else the resident set's (since
    :func:`reset_peak_memory` in a warm worker)."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration, ValueError):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def reset_peak_memory() -> None:
    """Count the next cell's peak memory afresh in this process: Linux resets the resident set's high-water mark
    (VmHWM) when 5 is written to /proc/self/clear_refs; CUDA's allocator resets its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak stays the process's
        pass
    torch = sys.modules.get("torch")  # imported by an earlier cell, or not at all
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def run_cell_file(spec_file: Path) -> CellRecord:
    """Run the cell of ``spec_file`` and write its record; a copy of the cell that runs at the same time (a job
    submitted again while the first still ran) waits for it and returns its record instead of training again."""
    spec = CellSpec.from_json(Path(spec_file).read_text())
    path = Path(spec.record)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(Path(spec_file).with_suffix(".lock")):
        if path.is_file():
            earlier = CellRecord.from_json(path.read_text(), str(path))
            if earlier.ok and earlier.definition == spec.definition:
                return earlier
        record = run_cell(spec)
        write_atomically(path, record.to_json() + "\n")
    return record


def main(spec_file: str) -> int:
    configure_logging()
    return 0 if run_cell_file(Path(spec_file)).ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
