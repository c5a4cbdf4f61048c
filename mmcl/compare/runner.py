"""Running a study: every (task, loss, seed) cell once, resumable, in parallel processes or machine shards.

Re-running the same command finishes what is missing: a finished cell is never repeated, an interrupted one
resumes from its checkpoint, a failed one is shown as a gap and retried only with ``retry_failed``. The study
folder's layout is described in :mod:`mmcl.compare.records`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from mmcl.compare.plan import Plan, plan
from mmcl.compare.records import CellRecord, CellSpec, record_path, safe_name, write_records_file
from mmcl.compare.study import Cell, Study
from mmcl.runs import write_atomically
from mmcl.runs.lock import RunLock

log = logging.getLogger("mmcl")


def run_study(study: Study, output: Path, jobs: int = 1, shard: tuple[int, int] | None = None,
              retry_failed: bool = False) -> Plan:  # fmt: skip
    """Run the study's missing cells into ``output`` with ``jobs`` processes (a tuned study's searches first); returns
    what is done and failed afterwards.

    One process runs a study (or a shard of it) in a folder at a time: a second is refused, naming the first."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: run at least one cell at a time (--jobs 1 up to the number of cores)")
    plan(study, output, shard, retry_failed)  # refuses a changed definition before anything is written
    (output / "records").mkdir(parents=True, exist_ok=True)
    shard_name = "all" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
    advice = "wait for it to finish (mmcl compare --report shows what is done), or run into another --output folder"
    with RunLock(output, what="study folder", advice=advice, name=f".study-{shard_name}.lock"):
        _save_study(study, output)
        selections = None
        if study.tune is not None:  # the searches first: their selections are the tuned losses' options
            from mmcl.compare.search import run_search

            selections = run_search(study, output, jobs, shard)
        work = plan(study, output, shard, retry_failed, selections)  # under the lock: what another run finished counts
        log.info("study %s: %d cell(s), %d done, %d failed earlier, %d to run with %d process(es)", study.name,
                 len(work.cells), len(work.done), len(work.failed), len(work.todo), jobs)  # fmt: skip
        threads = max(1, (os.cpu_count() or 1) // jobs)
        specs = iter([write_spec(study, cell, output, threads) for cell in work.todo])
        run_pool(lambda: next(specs, None), jobs, after_cell)
        write_records_file(output)
    return plan(study, output, shard, selections=selections)


def _save_study(study: Study, output: Path) -> None:
    path = output / "study.yaml"
    text = yaml.safe_dump(study.source, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        write_atomically(path, text)  # another shard, or more seeds or losses: the definitions were checked


def cell_folder(output: Path, cell: Cell) -> Path:
    return output / "runs" / cell.task / cell.loss / f"seed{cell.seed}"


def write_spec(study: Study, cell: Cell, output: Path, threads: int, **extra) -> Path:
    """The cell's spec file: its resolved config (placed in its folder) and what its record reports; ``extra``
    sets :class:`CellSpec` fields (a tuning trial's ``run_dir``, ``record``, ``validation``, ``trial``)."""
    task = study.task(cell.task)
    folder = Path(extra.pop("run_dir", None) or cell_folder(output.resolve(), cell))
    raw = json.loads(json.dumps(cell.raw))  # a deep copy
    train = raw.setdefault("train", {})
    train.update(output_dir=str(folder.parent), run_name=folder.name, auto_resume=True, progress_bar=False)
    train.setdefault("threads", threads)
    fields = dict(
        id=cell.id, definition=cell.definition, task=cell.task, modality=task.modality, dataset=task.dataset,
        loss=cell.loss, seed=cell.seed, metric=task.metric, protocol=task.protocol,
        eval_tasks=list(task.config.eval.tasks or []) or [task.metric.split(".")[0]], raw=raw, run_dir=str(folder),
        study_dir=str(output.resolve()), record=str(record_path(output.resolve(), cell.id)), tuned=cell.tuned,
    )  # fmt: skip
    spec = CellSpec(**{**fields, **extra})
    path = output / "specs" / f"{safe_name(spec.id)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, spec.to_json())
    return path


def run_pool(
    next_spec: Callable[[], Path | None], jobs: int, finished: Callable[[int, Path, Path, float], None]
) -> None:
    """Each spec ``next_spec()`` hands out in its own ``python -m mmcl.compare.cell`` process, ``jobs`` at a time,
    until it hands out None and every process has ended; ``finished(returncode, spec, logfile, seconds)`` after
    each (a tuning search asks for the next trial there)."""
    running: list = []
    while True:
        while len(running) < jobs and (spec_file := next_spec()) is not None:
            folder = Path(CellSpec.from_json(spec_file.read_text()).run_dir)
            folder.parent.mkdir(parents=True, exist_ok=True)
            logfile = open(folder.parent / f"{folder.name}.log", "a")
            process = subprocess.Popen([sys.executable, "-m", "mmcl.compare.cell", str(spec_file)],
                                       stdout=logfile, stderr=subprocess.STDOUT)  # fmt: skip
            running.append((process, spec_file, logfile, time.perf_counter()))
        if not running:
            return
        time.sleep(0.2)
        for item in [item for item in running if item[0].poll() is not None]:
            process, spec_file, logfile, started = item
            logfile.close()
            running.remove(item)
            finished(process.returncode, spec_file, Path(logfile.name), time.perf_counter() - started)


def after_cell(returncode: int, spec_file: Path, logfile: Path, seconds: float) -> CellRecord:
    """The record a cell's process left, or, when it died before writing one (killed, out of memory), a failed
    record with the process's exit status and the end of its log."""
    spec = CellSpec.from_json(spec_file.read_text())
    path = Path(spec.record)
    if not path.is_file():
        tail = logfile.read_text()[-2000:] if logfile.is_file() else ""
        failure = CellRecord.for_cell(spec, error=f"the cell's process exited with {returncode}: {tail.strip()[-500:]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, failure.to_json() + "\n")
    record = CellRecord.from_json(path.read_text(), str(path))
    log.info("%s %s (%.0f s)%s", spec.id, record.status, seconds, "" if record.ok else f"; see {logfile}")
    return record
