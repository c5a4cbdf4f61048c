"""The configs shipped with mmcl, named without a path: ``mmcl pretrain graph/mutag``, ``mmcl configs``.

They live in the repository's ``configs/`` folder, installed as the package ``mmcl.configs``. A config's
description is its first comment line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SUFFIXES = (".yaml", ".yml")


def _root() -> Path:
    return Path(str(resources.files("mmcl.configs")))


STUDIES = "studies/"  # the folder of the packaged studies (``mmcl compare``), named ``studies/<name>``


def packaged_configs(studies: bool = False) -> dict[str, Path]:
    """Every packaged config by name (``graph/mutag``, ``quickstart``, ...), or every packaged study, sorted."""
    root = _root()
    found = [path for path in root.rglob("*") if path.suffix in SUFFIXES and path.is_file()]
    named = {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(found)}
    return {name: path for name, path in named.items() if name.startswith(STUDIES) == studies}


def describe(path: Path) -> str:
    """The config's one-line description: its first comment line."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def _stem(name: str) -> str:
    return name[: -len(Path(name).suffix)] if Path(name).suffix in SUFFIXES else name


def packaged_config(name: str) -> Path | None:
    """The packaged config ``name`` (with or without ``.yaml``; ``mmcl pretrain NAME``), or None."""
    return packaged_configs().get(_stem(name))


def packaged_study(name: str) -> Path | None:
    """The packaged study ``name`` as ``mmcl configs`` lists it (``cpu-small``, also ``studies/cpu-small``), or
    None."""
    stem = _stem(name)
    return packaged_configs(studies=True).get(stem if stem.startswith(STUDIES) else STUDIES + stem)


def format_configs() -> str:
    """``mmcl configs``: each packaged config's and study's name and description, as the commands take them."""
    configs, studies = packaged_configs(), packaged_configs(studies=True)
    width = max(len(name) for name in [*configs, *studies])
    lines = ["configs (mmcl pretrain NAME, mmcl evaluate NAME, mmcl configs NAME):"]
    lines += [f"  {name.ljust(width)}  {describe(path)}" for name, path in configs.items()]
    lines += ["", "studies (mmcl compare NAME, mmcl configs NAME):"]
    lines += [f"  {name.removeprefix(STUDIES).ljust(width)}  {describe(path)}" for name, path in studies.items()]
    return "\n".join(lines)


def read_text(path: Path, what: str) -> str:
    """A text file's content; a file that is not UTF-8 is an error naming it and the fix."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at position {error.start}); save "
            "it as UTF-8"
        ) from None
