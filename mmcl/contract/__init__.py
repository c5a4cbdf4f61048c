"""The contract between mmcl's engine and its plug-ins (modalities, evaluation tasks, your own code).

Modalities and tasks depend on this package and on :mod:`mmcl.losses`, never on the engine; the engine
depends on all of them and finds plug-ins through the registries (import-linter's contracts in
``pyproject.toml``, checked by ``tests/test_packaging.py``):

* :class:`ModalityAdapter`, :class:`Encoder`, :class:`TrainBatch`, :class:`Validation`, :class:`ModelCard`: what a
  modality provides; :mod:`mmcl.contract.export`: the manifest and weight files every export folder shares;
* :class:`Registry`: the one registration mechanism (decorators, built-ins imported on first lookup);
* :class:`Range` and the typed aliases (:data:`PositiveInt`, ...): the ranges of numeric options;
* :func:`derived_seed`, :func:`seed_device`, :class:`SeededViews`: reproducible randomness shared by training
  and evaluation;
* :data:`Progress`: how a long loop of an evaluation shows its progress;
* :func:`ensure_torchvision_ops`: the CPU-torch compatibility step, run before torchvision or transformers.
"""

from mmcl.contract.adapter import Encoder, ModalityAdapter, ModelCard, TrainBatch, Validation, ViewGroups
from mmcl.contract.compat import ensure_torchvision_ops
from mmcl.contract.options import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
)
from mmcl.contract.progress import Progress, no_progress
from mmcl.contract.registry import Registry
from mmcl.contract.seeding import SeededViews, derived_seed, seed_device

__all__ = [
    "Encoder",
    "Fraction",
    "ModalityAdapter",
    "ModelCard",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Progress",
    "Range",
    "Registry",
    "Seed",
    "SeededViews",
    "TrainBatch",
    "ViewGroups",
    "Validation",
    "derived_seed",
    "no_progress",
    "seed_device",
    "ensure_torchvision_ops",
]
