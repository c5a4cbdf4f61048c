"""Names that become paths: run names, study task names and loss labels, the files an export's manifest names.

Each is checked here, once, for every layer: a plain relative name that stays inside the folder it is joined to
(no ``..``, no absolute path, no ``~``, no backslash, no control character), or a ``ValueError`` naming the key,
the value and the fix. ``nested=False`` also refuses ``/``: a task name or a loss label is one folder of a cell's
path and one part of its id (``task/loss/seed0``).

>>> check_name("graphcl-mutag", "train.run_name")
'graphcl-mutag'
>>> check_name("a/b", "train.run_name")  # a sub-folder of train.output_dir
'a/b'
>>> check_name("a/../../b", "train.run_name")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: train.run_name='a/../../b' is not a plain name inside its folder ('..' is not allowed); use a name ...
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: object, key: str, *, nested: bool = True) -> str:
    """``value`` if it is a name that stays inside the folder it is joined to, else a ``ValueError`` naming ``key``.

    Args:
        value: the name as given.
        key: where it was given, for the message (``train.run_name``, ``tasks[0].name``, ...).
        nested: whether ``/`` may separate sub-folders (``exp/run1``).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}={value!r} must be a non-empty name of a file or folder")
    problem = _problem(value, nested)
    if problem:
        plain = re.sub(r"[^A-Za-z0-9_+-]+", "_", value).strip("_") or "run"
        raise ValueError(f"{key}={value!r} is not a plain name inside its folder ({problem}); use a name such as "
                         f"{plain!r}")  # fmt: skip
    return value


def inside(folder: str | Path, name: object, key: str) -> Path:
    """``folder / name`` for a ``name`` read from a file (an export's manifest), checked by :func:`check_name`."""
    return Path(folder) / check_name(name, key)


def _problem(value: str, nested: bool) -> str | None:
    if _CONTROL.search(value):
        return "control characters are not allowed"
    if "\\" in value:
        return "'\\' is not allowed"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return "an absolute path is not allowed"
    if value.startswith("~"):
        return "'~' is not allowed"
    parts = value.split("/")
    if not nested and len(parts) > 1:
        return "'/' is not allowed"
    if ".." in parts:
        return "'..' is not allowed"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' parts are not allowed"
    return None
