"""What a run of a study will do: the cells of this shard, those already done, failed, and to run; and ``--dry-run``'s
estimate of their cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmcl.compare.records import read_records
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
    todo = [c for c in cells if c not in done and (retry_failed or c not in failed)]
    return Plan(cells, done, failed, todo)


def estimate(study: Study, work: Plan, output: Path) -> list[dict]:
    """``--dry-run``: per task, the cells to run, steps and samples per cell, and seconds per cell where finished
    cells of the task (in ``output``) tell (else unknown)."""
    records = read_records(output)
    rows = []
    for task in study.tasks:
        cells = [c for c in work.todo if c.task == task.name]
        train = task.config.train
        size = _dataset_size(task)
        steps = train.max_steps or (None if size is None else train.epochs * _steps_per_epoch(size, train))
        finished = [r for r in records.values() if r.task == task.name and r.ok]
        seconds = sum(r.seconds for r in finished) / len(finished) if finished else None
        rows.append({"task": task.name, "modality": task.modality, "cells": len(cells), "steps": steps,
                     "samples": None if steps is None else steps * train.batch_size, "seconds_per_cell": seconds,
                     "dataset_items": size})  # fmt: skip
    return rows


def _steps_per_epoch(size: int, train) -> int:
    batches = size // train.batch_size if train.drop_last else -(-size // train.batch_size)
    return max(1, -(-batches // train.grad_accumulation))  # the trainer's: a last, smaller group ends each epoch


def _dataset_size(task) -> int | None:
    from mmcl.engine.config import build_adapter

    try:
        return len(build_adapter(task.config).train_dataset())
    except (OSError, ValueError):  # the data is not on this machine (a GPU study planned here)
        return None


def format_estimate(rows: list[dict], work: Plan) -> str:
    lines = [f"{len(work.cells)} cell(s): {len(work.done)} done, {len(work.failed)} failed earlier, "
             f"{len(work.todo)} to run", "", f"{'task':24}{'modality':10}{'cells':>6}{'steps/cell':>12}"
             f"{'samples/cell':>14}{'s/cell':>9}"]  # fmt: skip
    total = 0.0
    for row in rows:
        seconds = row["seconds_per_cell"]
        total += (seconds or 0.0) * row["cells"]
        steps = "?" if row["steps"] is None else str(row["steps"])
        samples = "?" if row["samples"] is None else str(row["samples"])
        lines.append(f"{row['task']:24}{row['modality']:10}{row['cells']:>6}{steps:>12}{samples:>14}"
                     f"{'?' if seconds is None else f'{seconds:.0f}':>9}")  # fmt: skip
    lines += ["", "cells to run:"] + [f"  {cell.id}" for cell in work.todo[:300]]
    if len(work.todo) > 300:
        lines.append(f"  ... and {len(work.todo) - 300} more")
    unknown = [row["task"] for row in rows if row["seconds_per_cell"] is None and row["cells"]]
    lines += ["", f"estimated time: {total / 60:.1f} min for the tasks with a finished cell"]
    if unknown:
        lines.append(f"no estimate yet for {unknown}: their first finished cell gives one (see s/cell)")
    return "\n".join(lines)
