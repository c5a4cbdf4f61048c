"""Two real processes (torchrun, gloo) against one process on the global batch, for every loss."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(*args: str, timeout: int, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC ARGS`` on a free port, one thread per process, this checkout importable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(port), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.distributed
@pytest.mark.parametrize(("path", "cases"), [("default", 27), ("blockwise", 24)])
def test_two_processes_match_single_process_on_global_batch(path, cases):
    """Every loss; with ``blockwise``, every loss that has the blockwise path, forced on against dense."""
    result = torchrun(str(WORKER), *(["--blockwise"] if path == "blockwise" else []), timeout=600)
    report = result.stdout
    assert result.returncode == 0, f"distributed worker failed:\n{report}\n{result.stderr[-3000:]}"
    assert report.count("OK ") >= cases and "FAIL" not in report, report


@pytest.mark.distributed
@pytest.mark.parametrize(("path", "cases"), [("default", 14), ("blockwise", 14)])
def test_two_processes_multiview_match_supcontrast_and_single_process(path, cases):
    """V = 3 and 4 views (and multi-crop's global views): NT-Xent and SupCon against SupContrast's SupConLoss
    on the global batch, the other multi-view losses against one process; dense and blockwise ranks."""
    result = torchrun(str(WORKER), "--multiview", *(["--blockwise"] if path == "blockwise" else []), timeout=600)
    report = result.stdout
    assert result.returncode == 0, f"distributed worker failed:\n{report}\n{result.stderr[-3000:]}"
    assert report.count("OK ") == cases and "FAIL" not in report, report
