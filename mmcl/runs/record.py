"""``RUN/run.json``: what produced a run (versions, commit, device, world size, threads, command) and how each of
its sessions (a start or a resume) ended."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mmcl.runs.files import now, record_file, write_atomically

log = logging.getLogger("mmcl")

LIBRARIES = ("torch", "torchvision", "transformers", "torch_geometric", "accelerate", "datasets", "scikit-learn")


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
        self.path = record_file(run_dir)

    def read(self) -> dict:
        """The record (empty before the first session); a damaged file is an error naming it and the way out."""
        if not self.path.is_file():
            return {}
        try:
            record = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"{self.path} is damaged ({error}); move it aside (mv {self.path} {self.path}.damaged): it only "
                "describes the run, whose training state is in its checkpoints, and a new one is started"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{self.path} does not hold a run record; move it aside and run again")
        return record

    def read_or_empty(self) -> dict:
        """The record, or an empty one where the file is missing or damaged (for notes that may go without)."""
        try:
            return self.read()
        except ValueError:
            return {}

    def write(self, record: dict) -> None:
        write_atomically(self.path, json.dumps(record, indent=2) + "\n")

    def last_session(self) -> dict:
        """The newest session's entry (empty before the first)."""
        sessions = self.read().get("sessions") or [{}]
        return sessions[-1]

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
