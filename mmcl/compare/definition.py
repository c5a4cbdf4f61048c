"""The study definition a report reads, without torch or data: a study file (a YAML file or a packaged study), or
the ``study.yaml`` that a run leaves in each study folder. Folders merged into one report (the shards of a study)
must hold the same definition: the same tasks (config, overrides, metric, loss options), losses, random-init
row, baseline, reference and claims; their seeds may differ. A difference is refused, naming the folders and what
differs, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mmcl.engine.configs import packaged_study, read_text

STUDY_FILE = "study.yaml"
#: The keys of a study that define its cells or its verdicts: merged folders must agree on them.
DEFINING = ("tasks", "losses", "random_init", "baseline", "reference", "claims", "tune")


def load_study_file(source: str | Path) -> Any:
    """A study's YAML: a file, or a packaged study's name (``studies/cpu-small`` or ``cpu-small``)."""
    path = Path(source).expanduser()
    if not path.is_file():
        name = str(source)
        packaged = packaged_study(name)
        if packaged is None:
            raise FileNotFoundError(f"study {name!r} is neither a file nor a packaged study; `mmcl configs` lists them")
        path = packaged
    try:
        return yaml.safe_load(read_text(path, "study file"))
    except yaml.YAMLError as error:
        raise ValueError(f"study file {path} is not valid YAML: {error}") from error


def folder_study(folders: list[Path]) -> dict:
    """The study definition saved in the folders (``study.yaml``; {} when none has one), refused when two differ."""
    found = [(folder, load_study_file(folder / STUDY_FILE)) for folder in folders if (folder / STUDY_FILE).is_file()]
    (first, study), *others = found or [(None, {})]
    for folder, other in others:
        differ = differences(study, other, str(first), str(folder))
        if differ:
            raise ValueError(
                f"the study folders {first} and {folder} hold different study definitions, which one report cannot "
                f"merge: {'; '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}; report each folder on its own"
            )
    return study


def differences(a: dict, b: dict, first: str = "the first", second: str = "the second") -> list[str]:
    """What differs between two studies' defining keys, one phrase each, naming the studies ``first`` and
    ``second``."""
    out = []
    for key in DEFINING:
        mine, theirs = _comparable(key, a.get(key)), _comparable(key, b.get(key))
        for name in sorted(set(mine) | set(theirs), key=str):
            where = f"{key} {name!r}" if key in ("tasks", "losses", "claims") else key
            if name not in theirs or name not in mine:
                out.append(f"{where} only in {first if name in mine else second}")
            elif mine[name] != theirs[name]:
                out += _difference(where, mine[name], theirs[name], first, second)
    return out


def _difference(where: str, mine: Any, theirs: Any, first: str, second: str) -> list[str]:
    if not (isinstance(mine, dict) and isinstance(theirs, dict)):
        return [f"{where} is {_show(mine)} in {first} and {_show(theirs)} in {second}"]
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return [f"{where}: {k} is {_show(mine.get(k))} in {first} and {_show(theirs.get(k))} in {second}" for k in changed]


def _show(value: Any) -> str:
    if value is None:
        return "absent"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _comparable(key: str, value: Any) -> dict:
    """A defining key as ``{name: description}``: tasks by name (their overrides as key -> value), losses by
    label, claims by position, any other key under its own name."""
    if key == "tasks":
        return {str(t.get("name")): _task(t) for t in value or [] if isinstance(t, dict)}
    if key == "losses":
        entries = [{"name": e} if isinstance(e, str) else dict(e) for e in value or []]
        return {str(e.pop("label", e.get("name"))): e for e in entries}
    if key == "claims":
        return dict(enumerate(value or []))
    return {} if value is None else {key: value}


def _task(entry: dict) -> dict:
    """A task entry with its overrides spread out (``train.max_steps`` -> ``"10"``) beside its other keys."""
    overrides = entry.get("overrides") or []
    if isinstance(overrides, dict):
        spread = {str(k): json.dumps(v) for k, v in overrides.items()}
    else:
        spread = dict(str(o).split("=", 1) if "=" in str(o) else (str(o), "") for o in overrides)
    return {**{k: v for k, v in entry.items() if k not in ("name", "overrides")}, **spread}
