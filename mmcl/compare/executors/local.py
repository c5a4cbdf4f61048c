"""``--executor local`` (the default): the cells in worker processes on this machine, ``--jobs`` at once.

Each worker is ``python -m mmcl.compare.worker`` (:mod:`mmcl.compare.worker`). A warm worker (``warm=true``, the
default) runs one cell after another, keeping its imports and dataset caches; ``warm=false`` starts a fresh
process for every cell. On a machine with GPUs each worker has its own (``CUDA_VISIBLE_DEVICES``, set before it
imports torch), and as many cells run at once as there are GPUs unless ``--jobs`` says otherwise (more jobs than
GPUs share them in turn). A worker that dies (killed, out of memory) takes only its cell, which the pool records
as lost with the worker's exit status; the next cell gets a fresh worker.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from mmcl.compare.executor import Ended, Executor, Option, count, flag, register_executor


def gpu_list(text: str) -> list[str]:
    """``0,1,3`` (GPU ids) or ``none``."""
    text = text.strip()
    if text.lower() in ("none", ""):
        return []
    ids = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in ids):
        raise ValueError("must be GPU ids separated by commas (0,1) or none")
    return ids


def visible_gpus() -> list[str]:
    """The GPUs this machine lends the study: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [part for part in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if part.strip() not in ("", "-1")]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class _Worker:
    """One worker process, the GPU it was given and the cell it runs; a thread passes its answers (and its end,
    as None) to ``answers`` (a thread, not ``select``: pipes cannot be selected on Windows)."""

    def __init__(self, gpu: str | None, cells: int, log: IO, answers: queue.Queue) -> None:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        self.process = subprocess.Popen([sys.executable, "-m", "mmcl.compare.worker", str(cells)], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                        bufsize=1)  # fmt: skip
        self.cells, self.served, self.spec = cells, 0, None
        threading.Thread(target=self._listen, args=(answers,), daemon=True).start()

    def _listen(self, answers: queue.Queue) -> None:
        for line in self.process.stdout:
            answers.put((self, line))
        answers.put((self, None))

    def run(self, spec_file: Path) -> None:
        self.spec = spec_file
        self.process.stdin.write(f"{spec_file}\n")
        self.process.stdin.flush()

    def answer(self, line: str | None) -> Ended:
        """The cell's end: the worker's answer, or None when it died."""
        spec, self.spec = self.spec, None
        if line and line.strip():
            self.served += 1
            return Ended(spec, int(line), f"the worker (PID {self.process.pid}) ran it and answered {line.strip()}")
        returncode = self.process.wait()
        return Ended(spec, returncode or -1,
                     f"the local worker process (PID {self.process.pid}) {exit_reason(returncode)}")  # fmt: skip

    @property
    def usable(self) -> bool:
        return self.process.poll() is None and (not self.cells or self.served < self.cells)

    def stop(self, force: bool = False) -> None:
        if force and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the trainer ends its session as stopped
        try:
            self.process.stdin.close()
        except OSError:  # its end of the pipe is gone with it
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@register_executor("local")
class LocalExecutor(Executor):
    """Worker processes on this machine (see the module)."""

    name = "local"
    options = {
        "warm": Option(flag, "true: a worker runs several cells, keeping its imports and dataset caches (default); "
                             "false: a fresh process per cell"),
        "cells_per_worker": Option(count, "with warm=true, the cells a worker runs before a fresh one replaces it "
                                          "(default 0: no limit)"),
        "gpus": Option(gpu_list, "the GPU ids the cells share, e.g. 0,1, or none (default: CUDA_VISIBLE_DEVICES, "
                                 "else every GPU torch sees)"),
    }  # fmt: skip

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gpus = [] if self.resources.gpus == 0 else self.settings.get("gpus", None)
        self.cells = (self.settings.get("cells_per_worker", 0) or 0) if self.settings.get("warm", True) else 1
        self.slots: list[_Worker | None] = []
        self.log: IO | None = None
        self.answers: queue.Queue = queue.Queue()

    @property
    def parallelism(self) -> int:
        if self.gpus is None:
            self.gpus = visible_gpus()
        return self.jobs or max(1, len(self.gpus))

    def describe(self) -> str:
        gpus = f", one of the GPUs {self.gpus} each" if self.gpus else ""
        kind = "warm workers" if self.cells != 1 else "a fresh process per cell"
        return f"local executor: {self.parallelism} cell(s) at once, {kind}, {self.threads} thread(s) each{gpus}"

    def start(self) -> None:
        self.slots = [None] * self.parallelism

    def capacity(self) -> int:
        return sum(worker is None or worker.spec is None for worker in self.slots)

    def submit(self, spec_files: list[Path]) -> None:
        if self.log is None:  # a worker's output between cells (its start, its end)
            self.output.mkdir(parents=True, exist_ok=True)
            self.log = open(self.output / "workers.log", "a")
        for spec_file in spec_files:
            index = next(i for i, worker in enumerate(self.slots) if worker is None or worker.spec is None)
            worker = self.slots[index]
            if worker is None or not worker.usable:
                if worker is not None:
                    worker.stop()
                gpu = self.gpus[index % len(self.gpus)] if self.gpus else None
                worker = self.slots[index] = _Worker(gpu, self.cells, self.log, self.answers)
            worker.run(spec_file)

    def wait(self, timeout: float) -> list[Ended]:
        ended = []
        try:
            while True:
                worker, line = self.answers.get(timeout=timeout if not ended else 0)
                if worker.spec is not None:  # not the end of a worker that was idle (retired, stopped)
                    ended.append(worker.answer(line))
        except queue.Empty:
            return ended

    def cancel(self) -> None:
        for worker in self.slots:
            if worker is not None and worker.spec is not None:
                worker.stop(force=True)

    def close(self) -> None:
        for worker in self.slots:
            if worker is not None:
                worker.stop()
        self.slots = []
        if self.log is not None:
            self.log.close()
