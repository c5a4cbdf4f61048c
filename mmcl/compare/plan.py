"""What a run of a study will do: the cells of this shard, those already done, failed, and to run; and ``--dry-run``'s
estimate of their cost."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mmcl.compare.records import RANDOM_INIT, CellSpec, read_records
from mmcl.compare.study import Cell, Study


@dataclass(frozen=True)
class Plan:
    """What a run of a study will do: the cells of this shard, those already done, failed, and to run."""

    cells: list[Cell]
    done: list[Cell]
    failed: list[Cell]
    todo: list[Cell]


def plan(
    study: Study,
    output: Path,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    selections: dict[str, dict] | None = None,
) -> Plan:
    """The cells of ``shard`` (``(i, n)``, 1-based; None: all) and what is left of them in ``output``; a tuned
    study's cells at the search's ``selections`` (without them, its tuned losses have no cells yet)."""
    cells = [cell for cell in study.cells(selections) if shard is None or cell.shard(shard[1]) == shard[0]]
    records = read_records(output)
    changed = [c.id for c in cells if c.id in records and records[c.id].definition != c.definition]
    if changed:
        raise ValueError(
            f"the study's definition changed for {len(changed)} cell(s) already run in {output} (e.g. {changed[:3]}); "
            "run the changed study into another --output folder"
        )
    done = [c for c in cells if c.id in records and records[c.id].ok]
    failed = [c for c in cells if c.id in records and not records[c.id].ok]
    lost = {c.id for c in failed if records[c.id].lost}  # its worker died, not the cell: always run again
    todo = [c for c in cells if c not in done and (retry_failed or c not in failed or c.id in lost)]
    return Plan(cells, done, failed, todo)


def estimate(study: Study, work: Plan, output: Path, folders: list[Path] = (), calibrate: bool = False) -> list[dict]:
    """``--dry-run``: per task, the cells to run, steps and samples per cell, and seconds per cell: from finished
    cells of the task in ``output``, else from finished cells of the same task config (:attr:`TaskEntry.definition`)
    in ``folders``, else, with ``calibrate``, from a short calibration cell (:func:`calibrate_task`); else unknown."""
    records = read_records(output)
    others = read_records(*folders) if folders else {}
    rows = []
    for task in study.tasks:
        cells = [c for c in work.todo if c.task == task.name]
        train = task.config.train
        size = _dataset_size(task)
        steps = train.max_steps or (None if size is None else train.epochs * _steps_per_epoch(size, train))
        seconds, source = _mean_seconds([r for r in records.values() if r.task == task.name and r.ok]), "this folder"
        if seconds is None:
            same = [r for r in others.values() if r.task_definition == task.definition and r.ok]
            seconds, source = _mean_seconds(same), "--estimate-from"
        if seconds is None and calibrate and cells and steps:
            seconds, source = calibrate_task(study, task, steps), "calibration"
        rows.append({"task": task.name, "modality": task.modality, "cells": len(cells), "steps": steps,
                     "samples": None if steps is None else steps * train.batch_size, "seconds_per_cell": seconds,
                     "source": source if seconds is not None else None, "dataset_items": size})  # fmt: skip
    return rows


def _mean_seconds(records: list) -> float | None:
    return sum(r.seconds for r in records) / len(records) if records else None


def calibrate_task(study: Study, task, steps: int) -> float:
    """Seconds per cell of ``task`` (``steps`` steps) from one short calibration cell, run twice in fresh processes
    in a temporary folder: at 1 step and at 1 + k steps (k up to 10). The first gives what a cell costs besides its
    steps (process start, set-up, evaluation), the difference the step; a fresh process per run, so the estimate
    does not count on warm workers."""
    import tempfile

    from mmcl.compare.executor import EXECUTORS, Resources
    from mmcl.compare.records import CellRecord
    from mmcl.compare.runner import run_pool, write_spec

    cell = next(c for c in study.cells() if c.task == task.name and c.loss != RANDOM_INIT)
    extra = max(1, min(10, steps - 1))
    with tempfile.TemporaryDirectory(prefix="mmcl-calibration-") as folder:
        specs, seconds = [], {}
        for length in (1, 1 + extra):
            raw = json.loads(json.dumps(cell.raw))
            raw["train"]["max_steps"] = length
            specs.append(write_spec(study, Cell(cell.task, cell.loss, cell.seed, raw), Path(folder) / f"steps{length}",
                                    threads=max(1, (os.cpu_count() or 1))))  # fmt: skip
        executor = EXECUTORS.get("local")(Path(folder), 1, Resources(), {"warm": False})
        executor.start()
        queue = iter(specs)
        run_pool(lambda: next(queue, None), lambda rc, spec, log, s: seconds.__setitem__(spec, s), executor)
        executor.close()
        one, more = (CellRecord.from_json(Path(CellSpec.from_json(s.read_text()).record).read_text()) for s in specs)
    for record in (one, more):
        if not record.ok:
            raise ValueError(f"--calibrate: the calibration cell of task {task.name!r} failed: {record.error}")
    step = max(0.0, (more.train_seconds - one.train_seconds) / extra)
    return seconds[specs[0]] + (steps - 1) * step


def _steps_per_epoch(size: int, train) -> int:
    batches = size // train.batch_size if train.drop_last else -(-size // train.batch_size)
    return max(1, -(-batches // train.grad_accumulation))  # the trainer's: a last, smaller group ends each epoch


def _dataset_size(task) -> int | None:
    from mmcl.engine.config import build_adapter

    try:
        return len(build_adapter(task.config).train_dataset())
    except (OSError, ValueError):  # the data is not on this machine (a GPU study planned here)
        return None


def format_estimate(rows: list[dict], work: Plan, parallelism: int = 1) -> str:
    lines = [f"{len(work.cells)} cell(s): {len(work.done)} done, {len(work.failed)} failed earlier, "
             f"{len(work.todo)} to run", "", f"{'task':24}{'modality':10}{'cells':>6}{'steps/cell':>12}"
             f"{'samples/cell':>14}{'s/cell':>9}  from"]  # fmt: skip
    total = 0.0
    for row in rows:
        seconds = row["seconds_per_cell"]
        total += (seconds or 0.0) * row["cells"]
        steps = "?" if row["steps"] is None else str(row["steps"])
        samples = "?" if row["samples"] is None else str(row["samples"])
        lines.append(f"{row['task']:24}{row['modality']:10}{row['cells']:>6}{steps:>12}{samples:>14}"
                     f"{'?' if seconds is None else f'{seconds:.1f}':>9}  {row['source'] or ''}")  # fmt: skip
    lines += ["", "cells to run:"] + [f"  {cell.id}" for cell in work.todo[:300]]
    if len(work.todo) > 300:
        lines.append(f"  ... and {len(work.todo) - 300} more")
    unknown = [row["task"] for row in rows if row["seconds_per_cell"] is None and row["cells"]]
    lines += ["", f"estimated time: {total / parallelism / 60:.1f} min with {parallelism} cell(s) at once "
              f"({total / 60:.1f} min of cells) for the tasks with an estimate"]  # fmt: skip
    if unknown:
        lines.append(f"no estimate yet for {unknown}: their first finished cell gives one, or --estimate-from a "
                     "finished study of the same task configs, or --calibrate")  # fmt: skip
    return "\n".join(lines)
