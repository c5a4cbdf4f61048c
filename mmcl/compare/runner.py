"""Running a study: every (task, loss, seed) cell once, resumable, through an executor (this machine's worker
processes, a Ray cluster or a Slurm job array: :mod:`mmcl.compare.executor`), or in machine shards by hand.

Re-running the same command finishes what is missing: a finished cell is never repeated, an interrupted one
resumes from its checkpoint, a cell whose worker died (killed, out of memory, its node lost) is run again, and a
cell that failed by itself (it diverged) is shown as a gap and retried only with ``retry_failed``. The study
folder's layout is described in :mod:`mmcl.compare.records`; ``progress.json`` in it tells how far a run is
(:mod:`mmcl.compare.progress`).
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmcl.compare.executor import (
    Ended,
    Executor,
    ExecutorChoice,
    build_executor,
    choose_executor,
)
from mmcl.compare.plan import Plan, plan
from mmcl.compare.progress import Progress, earlier_seconds
from mmcl.compare.records import CellRecord, CellSpec, read_records, record_path, safe_name, write_records_file
from mmcl.compare.study import Cell, Study
from mmcl.runs import write_atomically
from mmcl.runs.lock import RunLock

log = logging.getLogger("mmcl")


def run_study(study: Study, output: Path, jobs: int | None = None, shard: tuple[int, int] | None = None,
              retry_failed: bool = False, executor: ExecutorChoice | None = None) -> Plan:  # fmt: skip
    """Run the study's missing cells into ``output`` through ``executor`` (default: the study's ``executor:``, else
    ``local``) with ``jobs`` cells at once (a tuned study's searches first); returns what is done and failed
    afterwards.

    One process runs a study (or a shard of it) in a folder at a time: a second is refused, naming the first."""
    choice = executor or choose_executor(study.executor, None, [])
    runner = build_executor(choice, output, jobs, study.resources)
    plan(study, output, shard, retry_failed)  # refuses a changed definition before anything is written
    runner.start()  # imports its engine and reaches its cluster before anything is written
    try:
        return _run_in_folder(study, output, shard, retry_failed, runner)
    finally:
        runner.close()


def _run_in_folder(study: Study, output: Path, shard: tuple[int, int] | None, retry_failed: bool,
                   runner: Executor) -> Plan:  # fmt: skip
    (output / "records").mkdir(parents=True, exist_ok=True)
    shard_name = "all" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
    advice = "wait for it to finish (mmcl compare --report shows what is done), or run into another --output folder"
    progress_file = "progress.json" if shard is None else f"progress-{shard_name}.json"
    with RunLock(output, what="study folder", advice=advice, name=f".study-{shard_name}.lock"):
        _save_study(study, output)
        selections = None
        if study.tune is not None:  # the searches first: their selections are the tuned losses' options
            from mmcl.compare.search import run_search

            tuning = _tuning_progress(study, output, shard, runner, progress_file)
            selections = run_search(study, output, runner, shard, progress=tuning)
            tuning.close()
        work = plan(study, output, shard, retry_failed, selections)  # under the lock: what another run finished counts
        log.info("study %s: %d cell(s), %d done, %d failed earlier, %d to run with the %s", study.name,
                 len(work.cells), len(work.done), len(work.failed), len(work.todo), runner.describe())  # fmt: skip
        progress = Progress(output, progress_file, f"{study.name}: cells", Counter(c.task for c in work.todo),
                            len(work.done), len([c for c in work.failed if c not in work.todo]),
                            earlier_seconds(read_records(output)), runner.describe(), runner.parallelism)  # fmt: skip
        specs = iter([write_spec(study, cell, output, runner.threads) for cell in work.todo])
        run_pool(lambda: next(specs, None), after_cell, runner, progress, batch=True)
        progress.close()
        write_records_file(output)
    return plan(study, output, shard, selections=selections)


def _tuning_progress(study: Study, output: Path, shard: tuple[int, int] | None, runner: Executor,
                     file: str) -> Progress:  # fmt: skip
    """The searches' progress: each task's trial budget less the trials finished earlier."""
    from mmcl.compare.search import TRIALS, groups

    records = read_records(output / TRIALS)
    budget = Counter(group.task.name for group in groups(study, shard) for _ in range(study.tune.trials))
    finished = Counter(record.task for record in records.values() if not record.lost)
    waiting = Counter({task: max(0, n - finished[task]) for task, n in budget.items()})
    done = sum(min(finished[task], n) for task, n in budget.items())
    return Progress(output, file, f"{study.name}: tuning trials", waiting, done, 0, earlier_seconds(records),
                    runner.describe(), runner.parallelism)  # fmt: skip


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
        task_definition=task.definition,
    )  # fmt: skip
    spec = CellSpec(**{**fields, **extra})
    path = output / "specs" / f"{safe_name(spec.id)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, spec.to_json())
    return path


def run_pool(
    next_spec: Callable[[], Path | None],
    finished: Callable[[int, Path, Path, float], None],
    executor: Executor,
    progress: Progress | None = None,
    batch: bool = False,
) -> None:
    """Each spec ``next_spec()`` hands out run by ``executor`` (started; its caller closes it) until it hands out
    None and every cell has ended; ``finished(returncode, spec, logfile, seconds)`` after each (a tuning search asks
    for the next trial there). ``batch``: the specs are known up front (a study's cells), so an executor that
    queues cells itself (a Slurm job array) gets them all at once."""
    running: dict[Path, _Submitted] = {}
    try:
        while True:
            limit = sys.maxsize if batch and executor.queues else executor.capacity()
            specs = list(itertools.takewhile(lambda spec: spec is not None, (next_spec() for _ in range(limit))))
            if specs:
                running.update({spec: _Submitted.of(spec) for spec in specs})
                executor.submit(specs)
                if progress is not None:
                    progress.started(running[spec] for spec in specs)
            if not running:
                return
            for ended in executor.wait(timeout=1.0):
                submitted = running.pop(ended.spec_file)
                _record_if_lost(submitted, ended, executor.name)
                seconds = time.perf_counter() - submitted.started
                finished(ended.returncode, ended.spec_file, submitted.logfile, seconds)
                if progress is not None:
                    progress.ended(submitted, seconds)
            if progress is not None:
                progress.update()
    except BaseException:  # interrupted (Ctrl-C) or a refused submission: stop what runs; its folders resume later
        executor.cancel()
        raise


@dataclass(frozen=True)
class _Submitted:
    """A cell handed to an executor: its spec, log, record (and that record's state then) and start time."""

    spec: CellSpec
    spec_file: Path
    logfile: Path
    record_before: float | None  # the record's modification time at submission (an earlier failed attempt's)
    started: float

    @classmethod
    def of(cls, spec_file: Path) -> _Submitted:
        spec = CellSpec.from_json(spec_file.read_text())
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        record = Path(spec.record)
        before = record.stat().st_mtime if record.is_file() else None
        return cls(spec, spec_file, spec.log, before, time.perf_counter())


def _record_if_lost(submitted: _Submitted, ended: Ended, executor: str) -> None:
    """A cell whose worker ended before the cell wrote its record (killed, out of memory, its node lost) is recorded
    as lost: failed with the executor's reason and the end of its log, and run again by the next invocation."""
    path = Path(submitted.spec.record)
    if path.is_file() and path.stat().st_mtime != submitted.record_before:
        return
    tail = submitted.logfile.read_text(errors="replace")[-2000:].strip()[-500:] if submitted.logfile.is_file() else ""
    error = f"{executor} executor: {ended.reason}" + (f"; the end of its log: {tail}" if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, CellRecord.for_cell(submitted.spec, error=error, lost=True).to_json() + "\n")


def after_cell(returncode: int, spec_file: Path, logfile: Path, seconds: float) -> CellRecord:
    """The record a cell left (:func:`run_pool` records a cell whose worker died before it wrote one)."""
    spec = CellSpec.from_json(spec_file.read_text())
    path = Path(spec.record)
    record = CellRecord.from_json(path.read_text(), str(path))
    log.info("%s %s (%.0f s)%s", spec.id, record.status, seconds, "" if record.ok else f"; see {logfile}")
    return record
