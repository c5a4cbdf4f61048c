"""mmcl.contract.compat: torchvision and transformers import next to a CPU-only torch, in fresh interpreters.

The two interpreters are started together (each pays torch's import time) to keep the suite fast.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IMPORTS = """
import mmcl.modalities.vision  # the vision modality runs the compatibility step before importing torchvision
import torchvision
from transformers import BertModel
import torchvision.transforms.v2
print("IMPORTS OK", torchvision.__version__, BertModel.__name__)
"""

# compat.py is loaded from its file so that the first call here is the first call in the process
# (importing an mmcl modality would already have called it once).
COMPAT = ROOT / "mmcl" / "contract" / "compat.py"
TWICE = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("mmcl_compat_under_test", {str(COMPAT)!r})
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
first = compat.ensure_torchvision_ops()
second = compat.ensure_torchvision_ops()
assert isinstance(first, bool) and isinstance(second, bool), (first, second)
assert second is False, "the second call must find the schemas and do nothing"
import torch, torchvision
import torchvision.transforms.v2
assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")
third = compat.ensure_torchvision_ops()  # after torchvision registered its fake kernels
assert third is False, third
import mmcl.modalities.vision  # the modality's own call is harmless as well
from mmcl.contract import ensure_torchvision_ops
assert ensure_torchvision_ops() is False
print("TWICE OK", first, second)
"""


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, code in (("imports", IMPORTS), ("twice", TWICE))
    }
    out = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=180)
            out[name] = (proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return out


def test_mmcl_then_torchvision_and_transformers_import(results):
    returncode, stdout, stderr = results["imports"]
    assert returncode == 0, stderr[-3000:]
    assert "IMPORTS OK" in stdout and "BertModel" in stdout


def test_ensure_torchvision_ops_is_idempotent_and_returns_bool(results):
    returncode, stdout, stderr = results["twice"]
    assert returncode == 0, stderr[-3000:]
    assert "TWICE OK" in stdout
    first = stdout.split("TWICE OK")[1].split()[0]
    assert first in ("True", "False")
