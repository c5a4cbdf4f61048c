"""Real mmcl processes for the tests that start one, wait for a moment in its work and kill it with everything it
started (studies, runs, executors' workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """``mmcl ARGS`` in its own session (so that :func:`kill_session` reaches what it starts), output discarded."""
    return subprocess.Popen([sys.executable, "-m", "mmcl", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL to ``process``'s session (it and every process it started), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def wait_for(
    condition: Callable[[], object],
    timeout: float = 600,
    process: subprocess.Popen | None = None,
    poll: float = 0.2,
) -> None:
    """Until ``condition()`` holds, every ``poll`` seconds; fails after ``timeout`` or when ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        assert process is None or process.poll() is None, f"the process ended early ({process.returncode})"
        time.sleep(poll)
