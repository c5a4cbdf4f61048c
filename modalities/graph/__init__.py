"""The ``graph`` modality: GIN/GCN/GraphSAGE encoders, GraphCL's augmentations and TU datasets."""

from modalities.graph.adapter import GraphAdapter, GraphDataConfig, GraphModelConfig
from modalities.graph.augment import (
    AttrMask,
    EdgePerturb,
    Identity,
    NodeDrop,
    RandomChoice,
    Subgraph,
    build_augmentation,
    check_graph,
)
from modalities.graph.datasets import TUGraphs, load_tu
from modalities.graph.encoders import GraphBackbone, projection_head

__all__ = [
    "AttrMask",
    "EdgePerturb",
    "GraphAdapter",
    "GraphBackbone",
    "GraphDataConfig",
    "GraphModelConfig",
    "Identity",
    "NodeDrop",
    "RandomChoice",
    "Subgraph",
    "TUGraphs",
    "build_augmentation",
    "check_graph",
    "load_tu",
    "projection_head",
]
