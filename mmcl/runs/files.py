"""The files of a run folder, named here only: every other layer asks this module for a path.

A run folder holds::

    config.yaml     the resolved config, written atomically and only after validation
    run.json        versions, commit, device, world size, threads, command, times, status, every session
    metrics.jsonl   one record per logged step (each step once, also across resumes)
    checkpoints/    step_NNNNNNNN.pt (the last train.keep_checkpoints), best.pt with train.validate_every
    eval.json       every evaluation, per checkpoint and task, merged (never overwritten)
    tensorboard/    TensorBoard logs (train.loggers: other trackers' folders, e.g. wandb/)
    model/          the modality's export with its model card (mmcl.runs.card)
    .lock           held while a process trains in the folder (.lock.owner names the process)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CONFIG = "config.yaml"
RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"
EVALUATIONS = "eval.json"
CHECKPOINTS = "checkpoints"
EXPORT = "model"
TENSORBOARD = "tensorboard"
LOCK = ".lock"


def config_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG


def record_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RUN_RECORD


def metrics_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS


def evaluations_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / EVALUATIONS


def checkpoints_folder(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def export_folder(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / EXPORT


def tensorboard_folder(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / TENSORBOARD


def lock_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a run's (or an evaluation's) ``config.yaml``."""
    return config_file(path).is_file()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (someone else's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:  # an error or a signal (KeyboardInterrupt) in between leaves no temporary file behind
        tmp.unlink(missing_ok=True)
