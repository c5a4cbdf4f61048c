"""One cell of a study, run in its own process: pretrain (resuming an interrupted attempt), evaluate, record.

``python -m mmcl.engine.compare.cell SPEC.json`` reads the cell's spec (written by the study runner), trains
in the cell's run folder with ``train.auto_resume`` (an interrupted cell continues from its checkpoint; a changed
definition is refused), evaluates the task's protocol plus the representation metrics, and writes the cell's
record atomically. Each cell has its own process so that its peak memory is its own and a crash stays a cell's.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path

from mmcl.engine import runs
from mmcl.engine.config import config_from_dict
from mmcl.engine.evaluate import evaluate_run, lookup

#: Diagnostics kept in a record's training curves (those the plots draw, and every monitored loss).
CURVE_KEYS = ("loss", "lr", "pos_cos_mean", "neg_cos_mean", "tau", "embedding_rank")


def run_cell(spec: dict) -> dict:
    """Train and evaluate one cell; returns its record (``status`` ``ok`` or ``failed`` with the error)."""
    record = {key: spec[key] for key in ("id", "definition", "task", "modality", "dataset", "loss", "seed", "metric",
                                         "protocol")}  # fmt: skip
    run_dir = Path(spec["run_dir"]).relative_to(spec["study_dir"]).as_posix()  # portable: shards merge elsewhere
    record.update(loss_name=(spec["raw"].get("loss") or {}).get("name"), run_dir=run_dir)
    record["loss_options"] = {k: v for k, v in (spec["raw"].get("loss") or {}).items() if k != "name"}
    started = time.perf_counter()
    try:
        config = config_from_dict(spec["raw"])
        tasks = list(dict.fromkeys([*spec["eval_tasks"], "metrics"]))  # the protocol and the representation metrics
        if spec["loss"] == "random_init":  # the untrained encoder, evaluated in the cell's folder
            record.update(steps=0, samples_seen=0, train_seconds=0.0, curves=[], diagnostics={})
            trained_at = time.perf_counter()
            results = evaluate_run(spec["raw"], tasks, random_init=True)
        else:
            record.update(_train(config, Path(spec["run_dir"])))
            trained_at = time.perf_counter()
            results = evaluate_run(spec["run_dir"], tasks)
        record.update(_scores(results, spec["metric"]), eval_seconds=round(time.perf_counter() - trained_at, 2))
        record["status"] = "ok"
    except Exception as error:  # a cell that fails is recorded with its error and shown as a gap
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    record.update(
        peak_memory_mb=round(_peak_memory_mb(), 1),
        seconds=round(time.perf_counter() - started, 2),
        versions=runs.library_versions(),
        finished=runs.now(),
    )
    return record


def _train(config, run_dir: Path) -> dict:
    from mmcl.engine.trainer import pretrain

    started = time.perf_counter()
    pretrain(config)  # train.auto_resume: an interrupted attempt continues, a changed definition is refused
    curves = [
        {key: value for key, value in line.items() if key == "step" or key in CURVE_KEYS or key.startswith("monitor/")}
        for line in (json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines() if text)
    ]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    session = json.loads((run_dir / "run.json").read_text())["sessions"][-1]
    steps = int(last["step"])
    batch = config.train.batch_size * session.get("world_size", 1) * config.train.grad_accumulation
    return {
        "steps": steps,
        "samples_seen": steps * batch,
        "train_seconds": round(time.perf_counter() - started, 2),
        "diagnostics": {k: v for k, v in last.items() if k not in ("step", "epoch")},
        "curves": curves,
    }


def _scores(results: dict, metric: str) -> dict:
    """The primary value, every headline score (flat, dotted) and the representation metrics of a result."""
    from mmcl.tasks import get_task

    scores = {}
    for name, result in results.items():
        if isinstance(result, dict) and name != "metrics":
            for key in get_task(name).headline:
                value = lookup(result, key)
                if isinstance(value, (int, float)):
                    scores[f"{name}.{key}"] = float(value)
    representation = {
        f"{layer}.{key}": float(results["metrics"][layer][key])
        for layer in ("backbone", "head")
        for key in ("alignment", "uniformity", "effective_rank")
        if key in results.get("metrics", {}).get(layer, {})
    }
    value = lookup(results, metric)
    if not isinstance(value, (int, float)):
        raise ValueError(f"the evaluation has no number at {metric!r}")
    return {"value": float(value), "scores": scores, "representation": representation}


def _peak_memory_mb() -> float:
    """This process's peak memory: the GPU's allocator peak when CUDA ran, else the resident set's."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main(spec_file: str) -> int:
    from mmcl.cli import configure_logging

    configure_logging()
    spec = json.loads(Path(spec_file).read_text())
    record = run_cell(spec)
    runs.write_atomically(Path(spec["record"]), json.dumps(record, indent=1) + "\n")
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
