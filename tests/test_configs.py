"""Every shipped config file loads and validates (unknown keys, types, loss options, task options)."""

import re
import subprocess
import sys
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
    from mmcl.compare.search import format_search_plan, groups
    from mmcl.compare.study import read_study

    study = read_study(path.stem, {"DATA": str(tmp_path / "absent"), "MINILM": "unused", "BERT": "unused"})
    work = plan(study, tmp_path / "out")
    rows = estimate(study, work, tmp_path / "out")
    assert len(work.todo) == len(study.cells()) == sum(row["cells"] for row in rows)
    searches = groups(study) if study.tune else []  # a tuned loss's cells wait for its search's selection
    assert len(study.cells()) + len(searches) > 0, "the study has nothing to run"
    if searches:
        lines = format_search_plan(study, tmp_path / "out").splitlines()
        assert len(lines) == len(searches) + 2 and f"then {len(searches) * len(study.seeds)} cell(s)" in lines[-1]
    assert path.read_text().splitlines()[0].startswith("# "), "a study's first line describes it (mmcl configs)"


def test_every_name_mmcl_configs_lists_prints_and_runs_in_its_command(tmp_path):
    """``mmcl configs`` lists configs and studies by the names their commands take; each works in ``mmcl configs
    NAME`` (and in ``mmcl pretrain``/``mmcl compare``), and each description is a whole sentence."""
    from mmcl.compare.study import read_study
    from mmcl.engine.configs import packaged_config, packaged_study

    listing = _mmcl("configs", cwd=tmp_path).stdout
    configs, studies = listing.split("\nstudies")
    lines = {
        kind: [line.split(None, 1) for line in text.splitlines()[1:] if line.startswith("  ")]
        for kind, text in (("configs", configs), ("studies", studies))
    }
    assert len(lines["configs"]) == len(CONFIGS) and len(lines["studies"]) == len(STUDIES)
    for kind, rows in lines.items():
        for name, description in rows:
            assert description.endswith("."), f"{name}'s description is cut: {description!r}"
            path = packaged_config(name) if kind == "configs" else packaged_study(name)
            assert path is not None, f"mmcl configs lists {name!r}, which its command does not find"
    printed = _mmcl("configs", "cpu-small", cwd=tmp_path)
    assert printed.returncode == 0 and printed.stdout == (ROOT / "configs" / "studies" / "cpu-small.yaml").read_text()
    printed = _mmcl("configs", "graph/mutag", cwd=tmp_path)
    assert printed.returncode == 0 and printed.stdout == (ROOT / "configs" / "graph" / "mutag.yaml").read_text()
    assert read_study("cpu-small", {"DATA": str(tmp_path), "MINILM": "unused"}).name == "cpu-small"
    unknown = _mmcl("configs", "cpu-smal", cwd=tmp_path)
    assert unknown.returncode == 2 and "no packaged config or study 'cpu-smal'" in unknown.stderr


def test_the_readme_and_the_study_agree_on_how_long_cpu_small_takes():
    first_line = (ROOT / "configs" / "studies" / "cpu-small.yaml").read_text().splitlines()[0]
    readme = next(line for line in (ROOT / "README.md").read_text().splitlines() if "compare cpu-small" in line
                  and "--jobs 2" in line)  # fmt: skip
    minutes = re.search(r"about (\d+) minutes", first_line).group(1)
    assert f"about {minutes} minutes" in readme, (first_line, readme)


def _mmcl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcl", *args], capture_output=True, text=True, cwd=cwd, timeout=120)
