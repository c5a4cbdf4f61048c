"""A running study's progress: cells done, running, failed and waiting, each task's seconds per cell, and an ETA
that divides the work left by the executor's parallelism; a tqdm bar on a terminal and ``DIR/progress.json``
(``progress-shard-I-of-N.json`` for a shard) for watching a cluster run, which ``mmcl compare DIR --status``
prints (:func:`format_status`).

The ETA: each waiting cell costs its task's mean seconds per cell (this run's cells, else the folder's earlier
records, else the mean of the tasks known), a running one what is left of it; their sum over the parallelism,
and never less than the longest of them (a cell runs on one worker).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmcl.compare.records import CellRecord
from mmcl.runs import now, process_alive, write_atomically

WRITE_EVERY = 2.0  # seconds between two writes of progress.json while nothing starts or ends


class Progress:
    """The progress of one phase of a run (``cells`` or ``tuning``).

    Args:
        output: the study folder; ``file`` the progress file in it.
        label: the study's name and phase, for the bar.
        waiting: the cells to run, by task.
        done, failed: the cells of this run (or shard) already done, and failed earlier and not run again.
        earlier: the seconds per cell of the folder's earlier records, by task (the ETA's start).
        executor: one line naming the executor; ``parallelism``: its cells at once.
    """

    def __init__(self, output: Path, file: str, label: str, waiting: Counter, done: int, failed: int,
                 earlier: dict[str, list[float]], executor: str, parallelism: int) -> None:  # fmt: skip
        self.path, self.label, self.executor, self.parallelism = Path(output) / file, label, executor, parallelism
        self.waiting, self.done, self.failed = Counter(waiting), done, failed
        self.total = done + failed + sum(self.waiting.values())
        self.earlier = earlier
        self.measured: dict[str, list[float]] = defaultdict(list)
        self.running: dict[str, tuple[str, float]] = {}  # cell id -> (task, start)
        self.started_at, self.written = now(), 0.0
        self.bar = _bar(label, self.total, done + failed)
        self._write(finished=False)

    def started(self, cells: Iterable[Any]) -> None:
        """Cells handed to the executor (each with ``spec`` and ``started``)."""
        for cell in cells:
            self.waiting[cell.spec.task] -= 1
            self.running[cell.spec.id] = (cell.spec.task, cell.started)
        self._write(finished=False)

    def ended(self, cell: Any, seconds: float) -> None:
        """A cell ended after ``seconds``: done when its record says ok, else failed."""
        task, _ = self.running.pop(cell.spec.id)
        path = Path(cell.spec.record)
        ok = path.is_file() and CellRecord.from_json(path.read_text(), str(path)).ok
        self.done, self.failed = self.done + ok, self.failed + (not ok)
        if ok:
            self.measured[task].append(seconds)
        if self.bar is not None:
            self.bar.update(1)
        self._write(finished=False)

    def update(self) -> None:
        """Now and then between events: the bar's ETA and the file."""
        if time.monotonic() - self.written >= WRITE_EVERY:
            self._write(finished=False)

    def close(self) -> None:
        self._write(finished=True)
        if self.bar is not None:
            self.bar.close()

    def seconds_per_cell(self) -> dict[str, float]:
        """Each task's mean seconds per cell: this run's cells, else the folder's earlier records."""
        tasks = set(self.waiting) | set(self.measured) | set(self.earlier) | {t for t, _ in self.running.values()}
        out = {}
        for task in sorted(tasks):
            values = self.measured.get(task) or self.earlier.get(task)
            if values:
                out[task] = sum(values) / len(values)
        return out

    def eta(self) -> float | None:
        """Seconds until the last cell ends (None while no task has a measured cell)."""
        per_task = self.seconds_per_cell()
        if not per_task:
            return None if self.waiting.total() or self.running else 0.0
        default = sum(per_task.values()) / len(per_task)
        clock = time.perf_counter()
        left = [max(0.0, per_task.get(task, default) - (clock - start)) for task, start in self.running.values()]
        left += [per_task.get(task, default) for task, n in self.waiting.items() for _ in range(max(0, n))]
        return max(sum(left) / self.parallelism, max(left, default=0.0))

    def state(self, finished: bool) -> dict:
        clock = time.perf_counter()
        eta = self.eta()
        return {
            "label": self.label, "executor": self.executor, "parallelism": self.parallelism, "total": self.total,
            "done": self.done, "running": len(self.running), "failed": self.failed,
            "waiting": sum(n for n in self.waiting.values() if n > 0),
            "seconds_per_cell": {task: round(s, 2) for task, s in self.seconds_per_cell().items()},
            "eta_seconds": None if eta is None else round(eta, 1),
            "running_cells": [{"id": cell, "seconds": round(clock - start, 1)}
                              for cell, (_, start) in sorted(self.running.items())],
            "pid": os.getpid(), "host": socket.gethostname(), "started": self.started_at, "updated": now(),
            "updated_unix": time.time(), "finished": finished,
        }  # fmt: skip

    def _write(self, finished: bool) -> None:
        state = self.state(finished)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(state, indent=1) + "\n")
        self.written = time.monotonic()
        if self.bar is not None:
            self.bar.set_postfix_str(_postfix(state), refresh=True)


def _bar(label: str, total: int, initial: int) -> Any:
    """A tqdm bar on stderr when it is a terminal (in a log file, progress.json says the same)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="cell", desc=label, file=sys.stderr, dynamic_ncols=True)


def _postfix(state: dict) -> str:
    return f"running {state['running']}, failed {state['failed']}, ETA {format_seconds(state['eta_seconds'])}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no cell finished yet)"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def earlier_seconds(records: dict[str, CellRecord]) -> dict[str, list[float]]:
    """The seconds per cell of finished records, by task."""
    out: dict[str, list[float]] = defaultdict(list)
    for record in records.values():
        if record.ok and record.seconds:
            out[record.task].append(record.seconds)
    return dict(out)


def format_status(folder: Path) -> str:
    """``mmcl compare DIR --status``: each progress file of the study folder, as its run last wrote it."""
    paths = sorted(Path(folder).glob("progress*.json"))
    if not paths:
        raise FileNotFoundError(f"--status {folder}: no progress.json there; is it the --output of a study run?")
    return "\n\n".join(_format_one(json.loads(path.read_text()), path) for path in paths)


def _format_one(state: dict, path: Path) -> str:
    age = time.time() - state.get("updated_unix", time.time())
    if state["finished"]:
        how = f"ended {state['updated']}"
    elif state["host"] == socket.gethostname() and not process_alive(state["pid"]):
        how = f"its driver (PID {state['pid']}) is gone since {state['updated']}: run the study again to finish it"
    else:
        how = f"running, updated {age:.0f} s ago by PID {state['pid']} on {state['host']}"
    lines = [f"{state['label']} ({path.name}): {how}", f"  {state['executor']}",
             f"  {state['done']}/{state['total']} done, {state['running']} running, {state['failed']} failed, "
             f"{state['waiting']} waiting; ETA {format_seconds(state['eta_seconds'])}"]  # fmt: skip
    per_task = ", ".join(f"{task} {s:.1f} s" for task, s in state["seconds_per_cell"].items())
    lines.append(f"  seconds per cell: {per_task or 'none finished yet'}")
    lines += [f"  running: {cell['id']} ({cell['seconds']:.0f} s)" for cell in state["running_cells"]]
    return "\n".join(lines)
