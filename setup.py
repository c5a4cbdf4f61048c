"""Package discovery for the one ``mmcl`` namespace (the rest of the metadata is in pyproject.toml).

The repository's top-level folders ``losses/``, ``modalities/``, ``tasks/`` and ``configs/`` install as
subpackages of ``mmcl``; setuptools' ``find_packages`` cannot follow such a mapping by itself, so every package
under each folder is found here rather than listed by hand.
"""

from setuptools import find_packages, setup

PACKAGE_DIR = {
    "mmcl": "mmcl",
    "mmcl.losses": "losses",
    "mmcl.modalities": "modalities",
    "mmcl.tasks": "tasks",
    "mmcl.configs": "configs",
}


def packages() -> list[str]:
    found = []
    for package, folder in PACKAGE_DIR.items():
        found += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]
    return found


setup(packages=packages(), package_dir=PACKAGE_DIR)
