"""Locks on run folders: one process trains in a folder at a time; evaluations merge ``eval.json`` one at a time.

Both are ``filelock`` locks (``flock`` on POSIX, ``msvcrt`` on Windows; the operating system releases them when
their process dies, even by ``kill -9``). ``filelock`` knows nothing of who holds a lock, so the holder of a run
folder's lock writes its host and PID to ``.lock.owner`` beside it: the refusal names the process that trains
there, and a lock left behind by a process that died is taken over with a note naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from mmcl.runs.files import lock_file, now

log = logging.getLogger("mmcl")


class RunLock:
    """An exclusive lock on a run folder while a process trains in it (``RUN/.lock``; ``RUN/.lock.owner`` names
    the host and PID holding it); also a study folder's while a study runs in it (``what``, ``advice`` and
    ``name`` say so in the refusal and the file)."""

    def __init__(
        self,
        run_dir: Path,
        what: str = "run folder",
        advice: str = "wait for that run to finish, or start a new run with another train.run_name",
        name: str | None = None,
    ) -> None:
        self.path = Path(run_dir) / name if name else lock_file(run_dir)
        self.owner = self.path.with_name(self.path.name + ".owner")
        self.what, self.advice = what, advice
        self._lock = FileLock(self.path, timeout=0, thread_local=False)

    def __enter__(self) -> RunLock:
        try:
            self._lock.acquire()
        except Timeout:
            holder = self._read_owner() or "another process"
            raise ValueError(f"{self.what} {self.path.parent} is in use by {holder}; {self.advice}") from None
        previous = self._read_owner()
        if previous:
            log.warning("note: took over the lock of %s left by %s (that process is gone)", self.path.parent, previous)
        self.owner.write_text(f"PID {os.getpid()} on host {socket.gethostname()} since {now()}\n")
        return self

    def __exit__(self, *exc) -> None:
        if self._lock.is_locked:
            self.owner.unlink(missing_ok=True)
            self._lock.release()

    def _read_owner(self) -> str:
        try:
            return self.owner.read_text().strip()
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """A short exclusive lock on ``path``, waiting for it (merging evaluation results from several processes)."""
    with FileLock(path, thread_local=False):
        yield
