"""Two real processes (torchrun, gloo) against one process on the global batch, for every loss."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize(("path", "cases"), [("default", 27), ("blockwise", 24)])
def test_two_processes_match_single_process_on_global_batch(path, cases):
    """Every loss; with ``blockwise``, every loss that has the blockwise path, forced on against dense."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER),
    ] + (["--blockwise"] if path == "blockwise" else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    report = result.stdout
    assert result.returncode == 0, f"distributed worker failed:\n{report}\n{result.stderr[-3000:]}"
    assert report.count("OK ") >= cases and "FAIL" not in report, report


@pytest.mark.distributed
@pytest.mark.parametrize(("path", "cases"), [("default", 14), ("blockwise", 14)])
def test_two_processes_multiview_match_supcontrast_and_single_process(path, cases):
    """V = 3 and 4 views (and multi-crop's global views): NT-Xent and SupCon against SupContrast's SupConLoss
    on the global batch, the other multi-view losses against one process; dense and blockwise ranks."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), "--multiview",
    ] + (["--blockwise"] if path == "blockwise" else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    report = result.stdout
    assert result.returncode == 0, f"distributed worker failed:\n{report}\n{result.stderr[-3000:]}"
    assert report.count("OK ") == cases and "FAIL" not in report, report
