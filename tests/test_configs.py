"""Every shipped config file loads and validates (unknown keys, types, loss options, task options)."""

from pathlib import Path

import pytest

from mmcl.engine.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.to_dict() == load_config(config.to_dict()).to_dict()  # the saved form loads back the same
