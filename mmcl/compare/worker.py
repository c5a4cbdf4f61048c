"""A worker process that runs cells one after another: warm workers keep their imports (torch, the modalities) and
their dataset caches from one cell to the next, so that a cell pays only for its training and evaluation.

Every executor runs a cell through :func:`run_here`: the cell's output goes to its own log (``seed<k>.log`` beside
its run folder), the process's random state and peak-memory count start afresh, so that a cell's record does not
depend on what ran before it in the same process (tested), and the cell writes its record
(:func:`mmcl.compare.cell.run_cell_file`). The local executor starts ``python -m mmcl.compare.worker``, which
reads spec paths on stdin, one a line, and answers each with the cell's exit status on stdout; a Ray task or a
Slurm job calls :func:`run_here` in its own process.

The line protocol stays hand-written: ``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool`` break
the whole pool (or hang) when one worker dies, cannot give each worker its own GPU (``CUDA_VISIBLE_DEVICES`` must
be set before the worker imports torch), and cannot send each cell's output to its own file descriptor.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from mmcl.compare.cell import reset_peak_memory, run_cell_file
from mmcl.compare.records import CellSpec
from mmcl.logs import configure_logging


def run_here(spec_file: Path) -> int:
    """Run one cell in this process (a warm worker, a Ray task, a Slurm job): its output to its log, fresh random
    state; returns 0 when its record says ok, else 1."""
    spec = CellSpec.from_json(Path(spec_file).read_text())
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    with output_to(spec.log):
        configure_logging()
        fresh_state()
        print(f"mmcl: cell {spec.id} in process {os.getpid()}"
              f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})", flush=True)  # fmt: skip
        return 0 if run_cell_file(Path(spec_file)).ok else 1


def fresh_state() -> None:
    """The process-wide state an earlier cell may have changed, reset: the peak-memory count, and the global random
    generators of Python, numpy and torch. Every cell seeds the generators it draws from (its record is the same in
    any process); a fresh process draws these from the system, a warm worker fixes them, so that code that forgets
    to seed is at least not steered by the cells before it."""
    random.seed(0)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
    reset_peak_memory()


@contextlib.contextmanager
def output_to(logfile: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so child processes and C libraries too) appended
    to ``logfile`` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(logfile, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def serve(cells: int = 0) -> int:
    """Run the cells whose spec paths arrive on stdin, one a line, answering each with its exit status on stdout;
    end at the end of stdin or after ``cells`` cells (0: no limit)."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray output between cells goes to stderr, never into the answers
    served = 0
    for line in sys.stdin:
        try:
            status = run_here(Path(line.strip()))
        except KeyboardInterrupt:
            return 130
        answers.write(f"{status}\n")
        served += 1
        if cells and served >= cells:
            break
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
