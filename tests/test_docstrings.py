"""Every example in the package's docstrings runs and prints what it shows (``doctest``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("mmcl", "mmcl.losses", "mmcl.modalities", "mmcl.tasks")


def modules() -> list[str]:
    names = set(PACKAGES)
    for package in PACKAGES:
        names.update(
            info.name for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")
        )
    return sorted(names - {"mmcl.__main__"})


def test_the_walk_sees_every_subpackage():
    found = modules()
    for name in ("mmcl.engine.api", "mmcl.losses.blockwise.engine", "mmcl.modalities.graph.encoders", "mmcl.tasks.sts"):
        assert name in found


@pytest.mark.parametrize("name", modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (python -m doctest)"
