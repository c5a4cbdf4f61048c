"""Modality adapters: vision, text and graph encoders with their views and datasets.

Each adapter implements :class:`mmcl.contract.ModalityAdapter` and registers itself by name with
:func:`register_modality`; the engine builds it from the config's ``modality``, ``model`` and ``data``
sections. Your own modality is one class and one decorator::

    from mmcl.contract import ModalityAdapter
    from mmcl.modalities import register_modality

    @register_modality
    class AudioAdapter(ModalityAdapter):
        name = "audio"
        ...
"""

from __future__ import annotations

from mmcl.contract import ModalityAdapter, Registry

# Built-ins are imported on first lookup: each pulls in heavy libraries (torchvision, transformers, PyG).
MODALITIES: Registry[type[ModalityAdapter]] = Registry(
    "modality",
    builtin=("mmcl.modalities.vision", "mmcl.modalities.graph", "mmcl.modalities.text", "mmcl.modalities.paired"),
    config_key="modality",
)


def register_modality(cls: type[ModalityAdapter]) -> type[ModalityAdapter]:
    """Class decorator registering a :class:`~mmcl.contract.ModalityAdapter` under its ``name``."""
    return MODALITIES.register(cls.name)(cls)


def modality_class(name: str) -> type[ModalityAdapter]:
    """The adapter class registered as ``name`` (``vision``, ``text``, ``graph``, or a plug-in's)."""
    return MODALITIES.get(name)


def available_modalities() -> list[str]:
    return MODALITIES.names()


__all__ = ["MODALITIES", "available_modalities", "modality_class", "register_modality"]
