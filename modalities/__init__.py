"""Modality adapters: vision, text and graph encoders with their views and datasets.

Each adapter implements :class:`mmcl.adapter.ModalityAdapter` and registers itself by name; the
engine builds it from the config's ``modality``, ``model`` and ``data`` sections.
"""

from __future__ import annotations

import mmcl  # noqa: F401  (runs the torchvision compatibility step first)
from mmcl.adapter import ModalityAdapter

_ADAPTERS: dict[str, type[ModalityAdapter]] = {}


def register_adapter(cls: type[ModalityAdapter]) -> type[ModalityAdapter]:
    if cls.name in _ADAPTERS:
        raise ValueError(f"modality {cls.name!r} is registered twice")
    _ADAPTERS[cls.name] = cls
    return cls


def adapter_class(name: str) -> type[ModalityAdapter]:
    _import_builtin()
    if name not in _ADAPTERS:
        raise ValueError(f"unknown modality {name!r}; available: {sorted(_ADAPTERS)}")
    return _ADAPTERS[name]


def available() -> list[str]:
    _import_builtin()
    return sorted(_ADAPTERS)


def _import_builtin() -> None:
    # Imported lazily: each modality pulls in heavy libraries (torchvision, transformers, PyG).
    import importlib

    for module in ("modalities.vision", "modalities.graph", "modalities.text"):
        importlib.import_module(module)
