"""Run folders: the rules that keep a run's work from being lost or mislabelled, in one place.

A run folder holds::

    config.yaml     the resolved config, written atomically and only after validation
    run.json        versions, commit, device, world size, threads, command, times, status, every session
    metrics.jsonl   one record per logged step (each step once, also across resumes)
    checkpoints/    step_NNNNNNNN.pt (the last train.keep_checkpoints), best.pt with train.validate_every
    eval.json       every evaluation, per checkpoint and task, merged (never overwritten)
    tensorboard/    TensorBoard logs (train.loggers: other trackers' folders, e.g. wandb/)
    model/          the modality's export with its model card (mmcl.engine.card)
    .lock           held while a process trains in the folder

The rules:

* **A new run always gets a new folder.** ``train.run_name`` names it (refused when it exists), else
  ``<modality>-<dataset>-<loss>-<time>`` with a suffix when two runs start in the same second.
* **An existing folder is continued only on request**: ``--resume`` (``resume=True``), or ``train.auto_resume``
  when it holds a checkpoint of the same config. Overrides on resume are compared with the saved config: the
  keys of :data:`RESUMABLE` (length of the run, logging, checkpointing, workers, evaluation) are accepted and
  recorded in ``run.json``; any other change is refused before anything is written.
* **One process trains in a folder at a time** (:class:`RunLock`, a lock naming host and PID; the lock of a
  process that died is taken over, with a note).
* Nothing of a run is deleted except the checkpoints its own rotation retires.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mmcl")

#: Keys a resume may change: they cannot change what the finished steps computed.
RESUMABLE = (
    "train.max_steps",
    "train.epochs",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_workers",
    "train.threads",
    "train.progress_bar",
    "train.validate_every",
    "train.auto_resume",
    "train.monitor_losses",  # logged without gradient: they never change the weights
    "train.loggers",
    "train.save_optimizer_state",
    "eval.",  # every evaluation option
)
LIBRARIES = ("torch", "torchvision", "transformers", "torch_geometric", "accelerate", "datasets", "scikit-learn")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- creating and continuing


def create_run_folder(output_dir: str, run_name: str | None, default_name: str) -> Path:
    """A new, empty run folder: ``output_dir/run_name``, else ``output_dir/default_name`` (suffixed when taken)."""
    output = Path(output_dir).expanduser()
    names = [run_name] if run_name else [default_name] + [f"{default_name}-{i}" for i in range(2, 100)]
    for name in names:
        folder = output / name
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            continue
        except OSError as error:
            raise OSError(
                f"cannot create the run folder {folder} ({error.strerror}); set train.output_dir to a writable folder"
            ) from error
    raise ValueError(
        f"run folder {output / names[0]} exists: continue it with `mmcl pretrain {output / names[0]} --resume` "
        "(or train.auto_resume=true), or start a new run with another train.run_name"
    )


def parse_saved_config(run_dir: Path) -> dict:
    """The raw sections of ``RUN/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({error}); the run's config was edited by hand?") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a config")
    return raw


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.max_steps": 10, ...}`` of a config dict (lists are values)."""
    if not isinstance(section, dict):
        return {prefix: section}
    out: dict[str, Any] = {}
    for key, value in section.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict, new: dict) -> dict[str, list]:
    """``{dotted key: [saved value, new value]}`` for every key whose value differs."""
    before, after = flatten(saved), flatten(new)
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def refused_changes(changes: dict[str, list]) -> list[str]:
    """The changed keys a resume may not change (see :data:`RESUMABLE`)."""
    return [key for key in changes if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)]


def check_resume_changes(run_dir: Path, changes: dict[str, list], at_step: int) -> None:
    """Refuse the changes a resume cannot make, listing the keys; refuse a run shortened below its finished steps."""
    refused = refused_changes(changes)
    if refused:
        listed = ", ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise ValueError(
            f"--resume {run_dir}: {listed} would change what the finished steps computed; resume without them, or "
            f"start a new run (mmcl pretrain {run_dir / 'config.yaml'} ... train.run_name=NEW). A resume may change "
            f"only {', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE)}"
        )
    steps = changes.get("train.max_steps", [None, None])[1]
    if steps is not None and steps < at_step:
        raise ValueError(f"--resume {run_dir}: train.max_steps={steps} is below the {at_step} steps already done")


# ---------------------------------------------------------------- the lock


class RunLock:
    """An exclusive lock on a run folder while a process trains in it (``RUN/.lock``, naming host and PID).

    The operating system releases the lock when its process dies (even by ``kill -9``), so a lock left behind
    is taken over; the note names the process that left it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def __enter__(self) -> RunLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(
                f"run folder {self.path.parent} is in use by {holder}; wait for that run to finish, or start a new "
                "run with another train.run_name"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            log.warning("note: took over the lock of %s left by %s (that process is gone)", self.path.parent, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on host {socket.gethostname()} since {now()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """A short exclusive lock on ``path`` (merging evaluation results from several processes)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- run.json


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("mmcl", *LIBRARIES):
        try:
            versions[name] = metadata.version(name.replace("_", "-") if name == "torch_geometric" else name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the mmcl checkout this code runs from (``+dirty`` with uncommitted changes), else None."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


class RunRecord:
    """``RUN/run.json``: what produced the run and how each session (start or resume) ended."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "run.json"

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def write(self, record: dict) -> None:
        write_atomically(self.path, json.dumps(record, indent=2) + "\n")

    def start_session(self, **session: Any) -> None:
        record = self.read()
        record.update(versions=library_versions(), git_commit=git_commit(), python=platform.python_version())
        session = {"started": now(), "command": sys.argv, "status": "running", **session}
        record["sessions"] = [*record.get("sessions", []), session]
        record["status"] = "running"
        self.write(record)

    def update_session(self, **values: Any) -> None:
        record = self.read()
        record["sessions"][-1].update(values)
        if "status" in values:
            record["status"] = values["status"]
        self.write(record)

    def end_session(self, status: str, error: str | None = None, **values: Any) -> None:
        self.update_session(status=status, ended=now(), **({"error": error} if error else {}), **values)

    def warn(self, message: str) -> None:
        log.warning("warning: %s", message)
        record = self.read()
        record.setdefault("warnings", []).append({"time": now(), "message": message})
        self.write(record)


# ---------------------------------------------------------------- metrics and evaluations


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the ``metrics.jsonl`` records up to ``step``: a resume from there writes the later steps again."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            write_atomically(path, "".join(line + "\n" for line in kept))


def record_evaluation(run_dir: Path, encoder: str, task: str, result: dict) -> Path:
    """Merge one task's result into ``RUN/eval.json`` under ``encoder`` (a checkpoint's name, ``random_init`` or
    ``as_built``), keeping every other result."""
    path = Path(run_dir) / "eval.json"
    with exclusive(Path(run_dir) / ".eval.lock"):
        results = json.loads(path.read_text()) if path.is_file() else {}
        results.setdefault(encoder, {})[task] = result
        write_atomically(path, json.dumps(results, indent=2) + "\n")
    return path


def read_evaluations(run_dir: Path) -> dict:
    """``{encoder: {task: result}}`` of ``RUN/eval.json`` (empty when nothing was evaluated)."""
    path = Path(run_dir) / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else {}
