"""Named components filled by decorators: the one registration mechanism of mmcl's plug-ins.

Every kind of component a config can name (modalities, evaluation tasks, image backbones and datasets,
graph encoders and datasets) lives in a :class:`Registry`. Registering is one decorator, in mmcl or in
your own code, before the name is used; configs name registered components only, never import paths::

    from mmcl.modalities.vision import register_backbone

    @register_backbone("my_mlp")
    def my_mlp(in_channels: int, hidden: int = 64):
        ...

Built-in components are imported on the first lookup (``builtin`` modules), so that listing or building
one kind never imports the heavy libraries of the others. Losses have their own registry in
:mod:`mmcl.losses` (the loss core depends on torch alone).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Components of one ``kind`` by name.

    Args:
        kind: what the components are, for messages (``"image backbone"``).
        builtin: modules whose import registers the built-in components; imported on the first lookup.
        config_key: the config key that names a component of this kind, for messages (``"model.backbone"``).
    """

    def __init__(self, kind: str, builtin: Iterable[str] = (), config_key: str | None = None) -> None:
        self.kind, self.config_key = kind, config_key
        self._builtin = tuple(builtin)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``component`` under ``name``; a name can be registered once."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")

        def decorate(component: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = component
            return component

        return decorate

    def get(self, name: str) -> T:
        """The component registered as ``name``; a ``ValueError`` naming the available ones otherwise."""
        self._import_builtin()
        if name not in self._entries:
            where = f" ({self.config_key})" if self.config_key else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}{where}; available: {self.names()} "
                "(your own components register with a decorator, and load with --plugin)"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._import_builtin()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._import_builtin()
        return name in self._entries

    def _import_builtin(self) -> None:
        for module in self._builtin:
            importlib.import_module(module)
