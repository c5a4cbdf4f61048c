"""The ``paired`` modality: two towers (any registered modalities) trained on pairs, CLIP-style.

``PairedAdapter`` (registered as ``paired``) builds tower ``a`` and tower ``b`` from their own modalities'
adapters; paired data come from a source registered with :func:`register_pairs` (``data.pairs``); the built-in
``molecule_text`` pairs RDKit molecule graphs with descriptions generated from their structure. Guide:
``docs/paired.md``.
"""

from mmcl.modalities.paired.adapter import PairedAdapter, PairedDataConfig, PairedEncoder, PairedModelConfig, PairInputs
from mmcl.modalities.paired.sources import PairSource, register_pairs

__all__ = [
    "PairInputs",
    "PairSource",
    "PairedAdapter",
    "PairedDataConfig",
    "PairedEncoder",
    "PairedModelConfig",
    "register_pairs",
]
