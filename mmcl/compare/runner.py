"""Running a study: every (task, loss, seed) cell once, resumable, in parallel processes or machine shards.

A study folder holds::

    study.yaml        the study as run (variables filled in); a changed definition is refused per cell
    records/          one JSON record per finished cell (ok or failed), written by the cell's own process
    records.jsonl     all records, one per line, the same schema for every modality
    runs/<task>/<loss>/seed<k>/   each cell's run folder (config, metrics, checkpoints, eval.json; seed<k>.log)
    report.md, report.csv, plots/ (PNG and SVG)

Re-running the same command finishes what is missing: a finished cell is never repeated, an interrupted one
resumes from its checkpoint, a failed one is shown as a gap and retried only with ``retry_failed``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmcl.engine import runs
from mmcl.engine.compare.study import Cell, Study

log = logging.getLogger("mmcl")


@dataclass(frozen=True)
class Plan:
    """What a run of a study will do: the cells of this shard, those already done, failed, and to run."""

    cells: list[Cell]
    done: list[Cell]
    failed: list[Cell]
    todo: list[Cell]


def plan(study: Study, output: Path, shard: tuple[int, int] | None = None, retry_failed: bool = False) -> Plan:
    """The cells of ``shard`` (``(i, n)``, 1-based; None: all) and what is left of them in ``output``."""
    cells = [cell for cell in study.cells() if shard is None or cell.shard(shard[1]) == shard[0]]
    records = read_records(output)
    changed = [c.id for c in cells if c.id in records and records[c.id]["definition"] != c.definition]
    if changed:
        raise ValueError(
            f"the study's definition changed for {len(changed)} cell(s) already run in {output} (e.g. {changed[:3]}); "
            "run the changed study into another --output folder"
        )
    done = [c for c in cells if records.get(c.id, {}).get("status") == "ok"]
    failed = [c for c in cells if records.get(c.id, {}).get("status") == "failed"]
    todo = [c for c in cells if c not in done and (retry_failed or c not in failed)]
    return Plan(cells, done, failed, todo)


def run_study(study: Study, output: Path, jobs: int = 1, shard: tuple[int, int] | None = None,
              retry_failed: bool = False) -> Plan:  # fmt: skip
    """Run the study's missing cells into ``output`` with ``jobs`` processes; returns the plan it carried out."""
    work = plan(study, output, shard, retry_failed)  # refuses a changed definition before anything is written
    (output / "records").mkdir(parents=True, exist_ok=True)
    _save_study(study, output)
    log.info("study %s: %d cell(s), %d done, %d failed earlier, %d to run with %d process(es)", study.name,
             len(work.cells), len(work.done), len(work.failed), len(work.todo), jobs)  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // jobs)
    specs = [_write_spec(study, cell, output, threads) for cell in work.todo]
    _run_processes(specs, jobs)
    write_records_file(output)
    return work


def _save_study(study: Study, output: Path) -> None:
    path = output / "study.yaml"
    text = yaml.safe_dump(study.source, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        runs.write_atomically(path, text)  # another shard, or more seeds or losses: the definitions were checked


def cell_folder(output: Path, cell: Cell) -> Path:
    return output / "runs" / cell.task / cell.loss / f"seed{cell.seed}"


def _write_spec(study: Study, cell: Cell, output: Path, threads: int) -> Path:
    """The cell's spec file: its resolved config (placed in its folder) and what its record reports."""
    task = study.task(cell.task)
    folder = cell_folder(output.resolve(), cell)
    raw = json.loads(json.dumps(cell.raw))
    train = raw.setdefault("train", {})
    train.update(output_dir=str(folder.parent), run_name=folder.name, auto_resume=True, progress_bar=False)
    train.setdefault("threads", threads)
    spec = {
        "id": cell.id,
        "definition": cell.definition,
        "task": cell.task,
        "modality": task.modality,
        "dataset": task.dataset,
        "loss": cell.loss,
        "seed": cell.seed,
        "metric": task.metric,
        "protocol": task.protocol,
        "eval_tasks": list(task.config.eval.tasks or []) or [task.metric.split(".")[0]],
        "raw": raw,
        "run_dir": str(folder),
        "study_dir": str(output.resolve()),
        "record": str(record_path(output.resolve(), cell.id)),
    }
    path = output / "specs" / f"{_safe(cell.id)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_atomically(path, json.dumps(spec, indent=1))
    return path


def _run_processes(specs: list[Path], jobs: int) -> None:
    """Each cell in its own ``python -m mmcl.engine.compare.cell`` process, ``jobs`` at a time."""
    pending, running = list(specs), []
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            folder = Path(json.loads(spec.read_text())["run_dir"])
            folder.parent.mkdir(parents=True, exist_ok=True)
            logfile = open(folder.parent / f"{folder.name}.log", "a")
            process = subprocess.Popen([sys.executable, "-m", "mmcl.engine.compare.cell", str(spec)],
                                       stdout=logfile, stderr=subprocess.STDOUT)  # fmt: skip
            running.append((process, spec, logfile, time.perf_counter()))
        time.sleep(0.2)
        for item in [item for item in running if item[0].poll() is not None]:
            process, spec, logfile, started = item
            logfile.close()
            running.remove(item)
            _after_cell(process.returncode, spec, Path(logfile.name), time.perf_counter() - started)


def _after_cell(returncode: int, spec_file: Path, logfile: Path, seconds: float) -> None:
    spec = json.loads(spec_file.read_text())
    record = Path(spec["record"])
    if not record.is_file():  # the process died before writing its record (killed, out of memory)
        tail = logfile.read_text()[-2000:] if logfile.is_file() else ""
        failure = {key: spec[key] for key in ("id", "definition", "task", "modality", "dataset", "loss", "seed",
                                              "metric", "protocol")}  # fmt: skip
        failure["run_dir"] = Path(spec["run_dir"]).relative_to(spec["study_dir"]).as_posix()
        failure.update(status="failed", error=f"the cell's process exited with {returncode}: {tail.strip()[-500:]}")
        runs.write_atomically(record, json.dumps(failure, indent=1) + "\n")
    status = json.loads(record.read_text())["status"]
    log.info("%s %s (%.0f s)%s", spec["id"], status, seconds, "" if status == "ok" else f"; see {logfile}")


def record_path(output: Path, cell_id: str) -> Path:
    return output / "records" / f"{_safe(cell_id)}.json"


def _safe(cell_id: str) -> str:
    return cell_id.replace("/", "__")


def read_records(*folders: Path) -> dict[str, dict]:
    """Every cell record under the study folders (the shards of one study merge by cell id; a cell run in two
    folders keeps its newest record)."""
    records: dict[str, dict] = {}
    for folder in folders:
        for path in sorted((Path(folder) / "records").glob("*.json")):
            record = json.loads(path.read_text())
            if record["id"] not in records or record.get("finished", "") >= records[record["id"]].get("finished", ""):
                records[record["id"]] = record
    return records


def write_records_file(output: Path, *more: Path) -> Path:
    """``records.jsonl``: every record of ``output`` (and of the other folders), one per line, ordered by cell."""
    records = read_records(output, *more)
    path = output / "records.jsonl"
    lines = [json.dumps({k: v for k, v in r.items() if k != "traceback"}) for _, r in sorted(records.items())]
    runs.write_atomically(path, "".join(line + "\n" for line in lines))
    return path


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
        finished = [r for r in records.values() if r["task"] == task.name and r.get("status") == "ok"]
        seconds = sum(r.get("seconds", 0.0) for r in finished) / len(finished) if finished else None
        rows.append({"task": task.name, "modality": task.modality, "cells": len(cells), "steps": steps,
                     "samples": None if steps is None else steps * train.batch_size, "seconds_per_cell": seconds,
                     "dataset_items": size})  # fmt: skip
    return rows


def _steps_per_epoch(size: int, train) -> int:
    batches = size // train.batch_size if train.drop_last else -(-size // train.batch_size)
    return max(1, batches // train.grad_accumulation)


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
