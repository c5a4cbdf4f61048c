"""Every shipped config file loads and validates (unknown keys, types, loss options, task options)."""

from pathlib import Path

import pytest

from mmcl.engine.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "studies")
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.to_dict() == load_config(config.to_dict()).to_dict()  # the saved form loads back the same


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_is_valid_and_plans_without_its_data(path, tmp_path):
    """Every packaged study parses, names registered components and plans its cells (--dry-run) even where its
    data are absent (the GPU studies on this machine)."""
    from mmcl.compare.plan import estimate, plan
    from mmcl.compare.study import read_study

    study = read_study(path.stem, {"DATA": str(tmp_path / "absent"), "MINILM": "unused", "BERT": "unused"})
    work = plan(study, tmp_path / "out")
    rows = estimate(study, work, tmp_path / "out")
    assert len(work.todo) == len(study.cells()) == sum(row["cells"] for row in rows) > 0
    assert path.read_text().splitlines()[0].startswith("# "), "a study's first line describes it (mmcl configs)"
