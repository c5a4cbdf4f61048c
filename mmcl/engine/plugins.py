"""Your own components: plug-in modules imported before a config is read.

A plug-in is a Python module whose import registers components with the public decorators
(``register_loss``, ``register_modality``, ``register_task``, ``register_backbone``, ``register_dataset``,
``register_encoder``, ``register_source``). mmcl imports plug-ins from three places, and never from a config
(configs name registered components only, never import paths):

* in Python, simply import your module before calling :func:`mmcl.pretrain`;
* on the command line, ``--plugin MODULE_OR_FILE`` (repeatable): a module name on ``sys.path`` or a ``.py``
  file;
* installed packages that declare an entry point in the group ``mmcl.plugins`` (e.g. in ``pyproject.toml``:
  ``[project.entry-points."mmcl.plugins"] my_components = "my_package.mmcl_plugin"``); each is imported once,
  on the first call of :func:`load_plugins` (the CLI and the API call it).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "mmcl.plugins"
_loaded: set[str] = set()


def load_plugins(plugins: Iterable[str] = ()) -> None:
    """Import the installed ``mmcl.plugins`` entry points (once per process) and each of ``plugins`` (module names
    or ``.py`` files, each once)."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {entry.name} = {entry.value}"
        if key not in _loaded:
            _loaded.add(key)
            try:
                entry.load()
            except Exception as error:
                raise ValueError(f"plug-in {key} (group {ENTRY_POINT_GROUP}) failed to load: {error}") from error
    for plugin in plugins:
        _import_plugin(plugin)


def _import_plugin(plugin: str) -> None:
    path = Path(plugin).expanduser()
    if plugin.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--plugin {plugin}: no such file")
        key = str(path.resolve())
        if key not in _loaded:
            _loaded.add(key)
            _import_file(path)
        return
    if plugin not in _loaded:
        _loaded.add(plugin)
        try:
            importlib.import_module(plugin)
        except ModuleNotFoundError as error:
            raise ValueError(
                f"--plugin {plugin}: module not found ({error}); pass a module on sys.path or a .py file"
            ) from error


def _import_file(path: Path) -> None:
    name = f"mmcl_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
