"""The ``graph`` modality: GIN/GCN/GraphSAGE encoders, GraphCL's augmentations, TU and PyG datasets.

Your own message-passing layer or data source is one decorated function (:func:`register_encoder`,
:func:`register_source`), then named in a config (``model.encoder``, ``data.source``).
"""

from mmcl.modalities.graph import molecules as _molecules  # noqa: F401,E402  (registers data.source=molecules)
from mmcl.modalities.graph.adapter import GraphAdapter, GraphDataConfig, GraphModelConfig
from mmcl.modalities.graph.augment import (
    AttrMask,
    EdgePerturb,
    Identity,
    NodeDrop,
    RandomChoice,
    Subgraph,
    build_augmentation,
    check_graph,
)
from mmcl.modalities.graph.datasets import GraphSource, load_graphs, register_source
from mmcl.modalities.graph.encoders import GraphBackbone, projection_head, register_encoder

__all__ = [
    "AttrMask",
    "EdgePerturb",
    "GraphAdapter",
    "GraphBackbone",
    "GraphDataConfig",
    "GraphModelConfig",
    "GraphSource",
    "Identity",
    "NodeDrop",
    "RandomChoice",
    "Subgraph",
    "build_augmentation",
    "check_graph",
    "load_graphs",
    "projection_head",
    "register_encoder",
    "register_source",
]
