"""``--executor slurm``: the cells of one run as one Slurm job array, through submitit's ``AutoExecutor``.

``--jobs N`` is the array's ``slurm_array_parallelism`` (at most N cells run at once); the options name the
partition, the time limit (minutes), GPUs, CPUs and memory (GB) per cell and the account. A job preempted or near
its time limit gets submitit's signal (USR2), is requeued, and its cell resumes from its checkpoint (every cell
trains with ``train.auto_resume``). The study folder, with submitit's own files in ``DIR/slurm/``, must be on the
cluster's shared file system, and the jobs run with this Python (the same virtual environment on every node).

``cluster=local`` runs submitit's local mode on this machine instead (a process per cell, ``--jobs`` at once, the
same requeue on USR2): how the tests exercise this executor without a cluster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mmcl.compare.executor import Ended, Executor, Option, count, positive, register_executor, require

#: A Slurm job's states that end it without a requeue.
SETTLED = ("COMPLETED", "FINISHED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
           "BOOT_FAIL", "DEADLINE", "INTERRUPTED", "NO PROCESS AND NO RESULT")  # fmt: skip


class CellJob:
    """A Slurm job's function: one cell (:func:`mmcl.compare.worker.run_here`), checkpointable, so that submitit
    requeues it when it is preempted or times out (the cell then resumes from its own checkpoint)."""

    def __call__(self, spec_file: str) -> int:
        from mmcl.compare.worker import run_here

        return run_here(Path(spec_file))

    def checkpoint(self, spec_file: str) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(CellJob(), spec_file)


def minutes(text: str) -> int:
    """A time limit: minutes (``90``) or ``H:MM:SS``."""
    parts = [int(part) for part in str(text).split(":")]
    if len(parts) > 3 or any(part < 0 for part in parts):
        raise ValueError("must be minutes (90) or H:MM:SS")
    if len(parts) == 1:
        return parts[0]
    hours, mins, secs = ([0] * (3 - len(parts)) + parts)[-3:]
    return max(1, hours * 60 + mins + (secs + 59) // 60)


def cluster_kind(text: str) -> str:
    if text not in ("slurm", "local"):
        raise ValueError("must be slurm (the cluster's scheduler) or local (submitit's local mode on this machine)")
    return text


@register_executor("slurm")
class SlurmExecutor(Executor):
    """A submitit job array (see the module)."""

    name = "slurm"
    options = {
        "cluster": Option(cluster_kind, "slurm (default) or local: submitit's local mode on this machine"),
        "partition": Option(str, "the Slurm partition"),
        "time": Option(minutes, "each cell's time limit, minutes or H:MM:SS (default 60)"),
        "gpus": Option(count, "GPUs per cell (default: the study's resources.gpus, else 0)"),
        "cpus": Option(count, "CPUs per cell (default: the study's resources.cpus, else 1)"),
        "mem": Option(positive, "memory per cell in GB"),
        "account": Option(str, "the Slurm account to charge"),
        "max_requeues": Option(count, "requeues of a cell that timed out (default 3; preemptions do not count)"),
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.local = self.settings.get("cluster", "slurm") == "local"
        self.queues = not self.local  # Slurm throttles an array itself; the local mode starts every job at once
        self.jobs_running: dict[Path, Any] = {}
        self.executor: Any = None

    @property
    def cpus(self) -> int:
        return self.settings.get("cpus") or self.resources.cpus or 1

    @property
    def parallelism(self) -> int:
        return self.jobs or 1

    @property
    def threads(self) -> int:
        return self.cpus

    def describe(self) -> str:
        where = "submitit's local mode on this machine" if self.local else "a Slurm job array"
        return f"slurm executor: {where}, {self.parallelism} cell(s) at once, {self.cpus} CPU(s) per cell"

    def start(self) -> None:
        submitit = require("submitit", "slurm", "slurm")
        folder = self.output / "slurm" / "%j"
        try:
            cluster = "local" if self.local else "slurm"
            requeues = self.settings.get("max_requeues", 3)
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=requeues)
        except RuntimeError as error:  # submitit finds no srun
            raise ValueError(f"--executor slurm: no Slurm here ({error}); run mmcl on the cluster's login node, or "
                             "--executor-option cluster=local for submitit's local mode") from None  # fmt: skip
        settings = {"name": "mmcl-cell", "timeout_min": self.settings.get("time", 60), "cpus_per_task": self.cpus,
                    "gpus_per_node": self.settings.get("gpus", int(self.resources.gpus or 0)),
                    "mem_gb": self.settings.get("mem"), "slurm_partition": self.settings.get("partition"),
                    "slurm_account": self.settings.get("account"),
                    "slurm_array_parallelism": self.jobs if self.jobs else None}  # fmt: skip
        self.executor.update_parameters(**{key: value for key, value in settings.items() if value is not None})

    def capacity(self) -> int:
        return max(0, self.parallelism - len(self.jobs_running))

    def submit(self, spec_files: list[Path]) -> None:
        try:
            with self.executor.batch():
                jobs = [self.executor.submit(CellJob(), str(spec_file)) for spec_file in spec_files]
        except Exception as error:  # sbatch refused: its message, on one line
            message = " ".join(str(error).split())
            raise ValueError(f"Slurm refused the job array of {len(spec_files)} cell(s): {message[-800:]}") from None
        self.jobs_running.update(zip(spec_files, jobs))

    def wait(self, timeout: float) -> list[Ended]:
        deadline = time.monotonic() + timeout
        while True:
            ended = [self._ended(spec) for spec, job in list(self.jobs_running.items()) if job.done()]
            if ended or time.monotonic() >= deadline:
                return ended
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _ended(self, spec_file: Path) -> Ended:
        job = self.jobs_running.pop(spec_file)
        state = job.state
        try:
            returncode = job.result()
        except Exception as error:  # the job died, or its function raised outside the cell
            lines = [line for line in str(error).splitlines() if line.strip()]
            return Ended(spec_file, -1, f"Slurm job {job.job_id} ended in state {state}: {' '.join(lines[-3:])}")
        return Ended(spec_file, returncode, f"Slurm job {job.job_id} ended in state {state}")

    def cancel(self) -> None:
        for job in self.jobs_running.values():
            job.cancel(check=False)
        self.jobs_running.clear()
