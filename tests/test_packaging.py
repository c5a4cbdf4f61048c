"""mmcl installs as one namespace, with the layering of its packages checked on the installed wheel.

The wheel is built and installed into a folder once per module (``pip wheel`` + ``pip install --target``), then
used through ``PYTHONPATH`` from folders outside the checkout, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _not_packaged(folder: str, names: list[str]) -> set[str]:
    """What the copy of the checkout leaves out: hidden files, build output, caches, and run folders at its top
    (``runs/`` there is output; ``mmcl/runs/`` is a package)."""
    skipped = set(shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")(folder, names))
    return skipped | ({"runs"} & set(names) if Path(folder) == ROOT else set())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "mmcl"  # a copy: setuptools writes build/ into the source tree
    shutil.copytree(ROOT, source, ignore=_not_packaged)
    folder = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), str(source))
    (built,) = folder.glob("mmcl-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip("install", "--quiet", "--no-deps", "--target", str(target), str(wheel))
    return target


def python(code_or_args: list[str], cwd: Path, site: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def user_folder(tmp_path: Path) -> Path:
    """A folder outside the checkout holding the user's own ``losses.py``, ``tasks.py`` and ``modalities.py``."""
    for name in ("losses", "tasks", "modalities"):
        (tmp_path / f"{name}.py").write_text("raise RuntimeError('the user module was imported')\n")
    return tmp_path


def test_the_wheel_installs_only_the_mmcl_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"mmcl", wheel.name.split("-py")[0] + ".dist-info"}, top
    for package in ("losses", "losses/blockwise", "losses/parts", "modalities/vision", "modalities/graph",
                    "modalities/text", "tasks", "contract", "engine"):  # fmt: skip
        assert f"mmcl/{package}/__init__.py" in names, package
    assert "mmcl/configs/graph/mutag.yaml" in names and "mmcl/configs/quickstart.yaml" in names


SOURCE_FOLDERS = {"mmcl": "mmcl", "losses": "mmcl/losses", "modalities": "mmcl/modalities", "tasks": "mmcl/tasks",
                  "configs": "mmcl/configs"}  # fmt: skip


def test_the_wheel_holds_every_module_and_packaged_file_of_the_source_tree(wheel):
    """Packages are discovered (setup.py), never listed by hand: a new folder cannot be left out of the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, installed_as in SOURCE_FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                expected.add(f"{installed_as}/{path.relative_to(ROOT / folder).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    assert {"mmcl/compare/report.py", "mmcl/runs/checkpoints.py", "mmcl/engine/compare/__init__.py"} <= names


STUDY = """
name: packaged-check
seeds: [0]
losses: [nt_xent, dhel]
tasks: [{name: digits, config: quickstart, overrides: [train.max_steps=3, optim.warmup_steps=0]}]
"""


def test_every_command_runs_from_a_non_editable_install(installed, tmp_path):
    """The wheel installed with pip (not ``-e``), from a folder outside the checkout: a study's dry run and a short
    quickstart (the wheel once lacked mmcl.engine.compare, so ``mmcl compare`` failed only there)."""
    (tmp_path / "study.yaml").write_text(STUDY)
    dry = python(["-m", "mmcl", "compare", "study.yaml", "--dry-run"], tmp_path, installed)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "2 cell(s): 0 done, 0 failed earlier, 2 to run" in dry.stdout and "digits/dhel/seed0" in dry.stdout
    quick = python(["-m", "mmcl", "quickstart", "train.max_steps=3", "optim.warmup_steps=0", "data.train_subset=256",
                    "train.progress_bar=false"], tmp_path, installed)  # fmt: skip
    assert quick.returncode == 0, quick.stderr[-2000:]
    assert (
        "knn top-1 (%)" in quick.stdout
        and str(installed)
        in python(["-c", "import mmcl.compare.cell as m; print(m.__file__)"], tmp_path, installed).stdout
    )


@pytest.mark.parametrize("old, new", [("mmcl.engine.compare.statistics", "mmcl.compare.statistics"),
                                      ("mmcl.engine.compare.report", "mmcl.compare.report"),
                                      ("mmcl.engine.runs", "mmcl.runs.folder")])  # fmt: skip
def test_the_import_paths_the_readme_documented_still_work_with_a_deprecation_warning(old, new, tmp_path):
    code = (
        "import importlib, warnings\nwarnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    importlib.import_module({old!r})\n"
        "except DeprecationWarning as warning:\n    print('WARNED', warning)\n"
        f"warnings.simplefilter('ignore', DeprecationWarning)\nold = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        "print('SAME', all(getattr(old, name) is getattr(new, name) for name in dir(new) if not name.startswith('_')"
        " and name in dir(old)), len([n for n in dir(old) if not n.startswith('_')]))"
    )
    result = python(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"WARNED {old.rsplit('.', 1)[0] if 'compare.' in old else old} moved to" in result.stdout, result.stdout
    assert "SAME True" in result.stdout, result.stdout


@pytest.mark.parametrize("layout", ["wheel", "editable"])
def test_user_modules_named_like_mmcl_subpackages_do_not_shadow_them(layout, request, tmp_path):
    site = request.getfixturevalue("installed") if layout == "wheel" else None
    folder = user_folder(tmp_path)
    code = "import mmcl.losses, mmcl.tasks, mmcl.modalities\nprint(mmcl.losses.__file__, mmcl.losses.available()[0])"
    result = python(["-c", code], folder, site)
    assert result.returncode == 0, result.stderr[-2000:]
    location, first = result.stdout.split()
    assert first == "nt_xent" and Path(location).parent.name == ("losses" if layout == "editable" else "losses")
    if site is not None:
        assert Path(location).is_relative_to(site)
    cli = python(["-m", "mmcl", "losses"], folder, site)
    assert cli.returncode == 0 and "nt_xent" in cli.stdout, cli.stderr[-2000:]


def test_layering_contract_holds_on_the_installed_package(installed, tmp_path):
    """import-linter's contracts (pyproject.toml): CLI > compare > engine > runs > modalities | tasks > contract |
    losses, and mmcl.logs imports no other part of mmcl."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout, result.stdout[-2000:]


LOSS_CORE_IMPORTS = """
import sys, grimp
graph = grimp.build_graph("mmcl", include_external_packages=True, cache_dir=None)
allowed = set(sys.stdlib_module_names) | {"torch"}
core = graph.find_descendants("mmcl.losses") | {"mmcl.losses"}
assert "mmcl.losses.core" in core, sorted(core)
for module in sorted(core):
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        inside = imported.startswith("mmcl.losses.") or imported == "mmcl.losses"
        if not inside and (imported.startswith("mmcl") or imported.split(".")[0] not in allowed):
            print("VIOLATION", module, "imports", imported)
print("CHECKED", len(core))
"""


def test_the_loss_core_imports_torch_and_the_standard_library_only(installed, tmp_path):
    pytest.importorskip("grimp", reason="grimp comes with import-linter (pip install -e '.[dev]')")
    result = python(["-c", LOSS_CORE_IMPORTS], tmp_path, installed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "VIOLATION" not in result.stdout and "CHECKED" in result.stdout, result.stdout[-3000:]


def test_mmcl_help_imports_no_torch(tmp_path):
    code = (
        "import sys\nfrom mmcl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'yaml')))"
    )
    result = python(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout, result.stdout[-500:]
