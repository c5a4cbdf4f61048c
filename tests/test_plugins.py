"""Your own code: a backbone and a dataset from a file outside the package, named in a config.

The plug-in (``tests/plugins/blobs_plugin.py``) is loaded three ways, each in a fresh process: ``--plugin FILE``
on the command line, an installed package's ``mmcl.plugins`` entry point, and a plain import before the Python API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins" / "blobs_plugin.py"

CONFIG = {
    "modality": "vision",
    "model": {"backbone": "test_mlp", "backbone_options": {"hidden": 24}, "head_dim": 16},
    "data": {"dataset": "test_blobs", "dataset_options": {"count": 200}, "augment": "digits"},
    "loss": {"name": "nt_xent", "temperature": 0.5},
    "train": {"max_steps": 3, "batch_size": 32, "cpu": True, "progress_bar": False, "log_every": 1},
    "eval": {"tasks": ["knn"], "knn": {"k": 10}},
}


def mmcl(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmcl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_config(folder: Path) -> Path:
    path = folder / "blobs.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def check_run(run_dir: Path) -> None:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["backbone"] == "test_mlp" and saved["data"]["dataset"] == "test_blobs"
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_plugin_file_on_the_command_line(tmp_path):
    config = write_config(tmp_path)
    refused = mmcl("pretrain", str(config), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "unknown image backbone 'test_mlp' (model.backbone)" in refused.stderr and "--plugin" in refused.stderr

    result = mmcl("pretrain", str(config), "train.run_name=blobs", "--plugin", str(PLUGIN), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "blobs"
    check_run(run_dir)
    evaluated = mmcl("evaluate", str(run_dir), "--plugin", str(PLUGIN), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    top1 = json.loads((run_dir / "eval.json").read_text())["step_00000003"]["knn"]["top1"]
    assert top1 > 90, top1  # four well-separated patterns: the plug-in's data and backbone were really used


def test_plugin_from_an_installed_entry_point(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN, site / "blobs_plugin.py")
    info = site / "mmcl_blobs_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmcl-blobs-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mmcl.plugins]\nblobs = blobs_plugin\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = mmcl("pretrain", str(write_config(tmp_path)), "train.run_name=blobs", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(tmp_path / "runs" / "blobs")


API = """
import sys
sys.path.insert(0, {plugins!r})
import blobs_plugin  # registers test_mlp and test_blobs
import mmcl
config = {config!r}
config["train"]["output_dir"] = {output!r}
run = mmcl.pretrain(config)
results = mmcl.evaluate(run)
encoder = mmcl.load_encoder(run)
import torch
print("RESULT", run.folder, results["knn"]["top1"], tuple(encoder(torch.zeros(2, 1, 8, 8)).shape))
"""


def test_plugin_imported_before_the_python_api(tmp_path):
    code = API.format(plugins=str(PLUGIN.parent), config=CONFIG, output=str(tmp_path / "runs"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder, top1, shape = result.stdout.split("RESULT ")[1].split(" ", 2)
    check_run(Path(folder))
    assert float(top1) > 90 and shape.strip() == "(2, 16)"
