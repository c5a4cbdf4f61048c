"""The ``graph`` modality: GNN encoders, GraphCL's augmentations and TU datasets behind the adapter contract.

GraphCL's unsupervised TU setting (You et al. 2020, arXiv:2010.13902; the packaged ``graph/mutag``)::

    modality: graph
    model: {encoder: gin, hidden_dim: 32, num_layers: 3, pooling: sum}
    data: {dataset: MUTAG, root: data/tu, augmentations: [node_drop, subgraph], first_view_unaugmented: true}
    loss: {name: graphcl}
    optim: {name: adam, lr: 0.01, weight_decay: 0.0, schedule: constant}
    train: {epochs: 20, batch_size: 128}

Pretraining items are ``([view_1, view_2], label)`` with two :class:`~torch_geometric.data.Data` views
(view 1 is the graph itself when ``first_view_unaugmented``, as in GraphCL's TU code); a batch is one PyG
``Batch`` of the ``B`` first views then the ``B`` second views. The evaluation split ``"all"`` is the
whole un-augmented dataset, items ``(Data, label)``, for the ``graph_classification`` task (10-fold
cross-validation over all graphs, as GraphCL evaluates).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import AddSelfLoops

from mmcl.contract import NonNegativeInt, PositiveInt
from mmcl.contract.adapter import Encoder, ModalityAdapter, ModelCard, TrainBatch
from mmcl.modalities import register_modality
from mmcl.modalities.graph.augment import Augmentation, AugmentationStrengths, Identity, build_augmentation
from mmcl.modalities.graph.batched import BatchedAugmentation, GraphStore, view_major, with_self_loops
from mmcl.modalities.graph.datasets import GraphSource, load_graphs
from mmcl.modalities.graph.encoders import ENCODERS, GraphBackbone, projection_head, xavier_init_
from mmcl.modalities.graph.export import export_encoder, load_encoder, usage


@dataclass
class GraphModelConfig:
    encoder: str = "gin"  # gin | gcn | sage | a plug-in's (register_encoder)
    hidden_dim: PositiveInt = 32
    num_layers: PositiveInt = 3
    pooling: Literal["sum", "mean", "max"] = "sum"
    jumping_knowledge: Literal["cat", "last"] = "cat"  # cat: every layer's pooled output, concatenated (GraphCL)
    batch_norm: bool = True
    batch_norm_per_view: bool = False  # in training, each view's nodes get their own batch statistics (GraphCL)
    head_layers: NonNegativeInt = 2  # GraphCL: Linear-ReLU-Linear; 0 = no head
    head_hidden_dim: PositiveInt | None = None  # default: the embedding width (GraphCL: 96)
    head_dim: PositiveInt | None = None  # default: the embedding width (GraphCL: 96)
    xavier_init: bool = True  # Xavier-uniform Linear weights, zero biases (GraphCL's init_emb)


@dataclass
class GraphDataConfig(AugmentationStrengths):
    """The ``data`` section of graphs: the source, the node features, the views, and the augmentations' strengths
    (:class:`~mmcl.modalities.graph.augment.AugmentationStrengths`: ``data.node_drop_ratio``, ...)."""

    source: str = "tu"  # tu (TU text files) | pyg (torch_geometric.datasets.<dataset>) | a plug-in's source
    dataset: str = "MUTAG"  # tu: a TU dataset name (MUTAG, PROTEINS, NCI1, ...); pyg: a dataset class name
    root: str | None = None  # tu: holds <dataset>/raw/ in the TU format, read only; pyg: PyG's own root
    dataset_options: dict = field(default_factory=dict)  # pyg / plug-in sources: keyword arguments
    cache_dir: str | None = None  # where torch-geometric's processed files go (default ~/.cache/mmcl)
    download: bool = False  # fetch from the TU server into cache_dir when root lacks the dataset
    node_features: Literal["auto", "labels", "attributes", "labels_and_attributes", "degree", "constant", "x"] = "auto"
    max_degree: NonNegativeInt | None = None  # node_features=degree: clip (default: the dataset's maximum degree)
    edge_attributes: bool = False  # keep TU edge labels/attributes as edge_attr (the built-in encoders ignore it)
    augmentations: list[str] = field(default_factory=lambda: ["node_drop", "subgraph"])  # one drawn per view
    first_view_unaugmented: bool = True  # GraphCL's TU code contrasts the graph with one augmented view
    self_loops: bool = False  # a self-loop on every node of the un-augmented graphs (GraphCL's TU loader)
    augment_on: Literal["auto", "loader", "device"] = "auto"  # auto: batched on the device; loader: per graph


class GraphViews(Dataset):
    """Items ``([view_1, view_2], label)``: two views of each graph drawn with torch's global RNG."""

    def __init__(self, source: GraphSource, first, second) -> None:
        self.source, self.first, self.second = source, first, second

    def __len__(self) -> int:
        return len(self.source.graphs)

    def __getitem__(self, index: int) -> tuple[list[Data], int]:
        graph = self.source.graphs[index]
        return [self.first(graph), self.second(graph)], graph_label(self.source, index)


class GraphIndices(Dataset):
    """Items ``(index, label)``: the graphs are gathered per batch from a :class:`GraphStore`."""

    def __init__(self, source: GraphSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source.graphs)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, graph_label(self.source, index)


class LabelledGraphs(Dataset):
    """Items ``(graph, label)`` of the un-augmented dataset, each graph passed through ``transform``."""

    def __init__(self, source: GraphSource, transform: Augmentation) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source.graphs)

    def __getitem__(self, index: int) -> tuple[Data, int]:
        return self.transform(self.source.graphs[index]), graph_label(self.source, index)


def graph_label(source: GraphSource, index: int) -> int:
    """The class id of graph ``index``; -1 when the source has no graph labels."""
    return -1 if source.labels is None else int(source.labels[index])


@register_modality
class GraphAdapter(ModalityAdapter):
    """Graphs: GIN/GCN/GraphSAGE with per-layer sum pooling, GraphCL's augmentations, TU datasets."""

    name = "graph"
    ModelConfig = GraphModelConfig
    DataConfig = GraphDataConfig
    default_eval_tasks = ("graph_classification",)
    evaluates_pretraining_items = True  # GraphCL's protocol cross-validates over the whole dataset

    def __init__(self, model: GraphModelConfig, data: GraphDataConfig) -> None:
        super().__init__(model, data)
        strengths = {f.name: getattr(data, f.name) for f in dataclasses.fields(AugmentationStrengths)}
        # the per-graph views (data.augment_on=loader) and the batched ones; names and strengths checked here
        self.augmentation = build_augmentation(data.augmentations, **strengths)
        self.batched = BatchedAugmentation(data.augmentations, **strengths)
        ENCODERS.get(model.encoder)  # an unknown name fails here, before any data is read
        if model.num_layers < 1 or model.hidden_dim < 1:
            raise ValueError(f"model.num_layers and model.hidden_dim must be >= 1, "
                             f"got {model.num_layers}, {model.hidden_dim}")  # fmt: skip
        self._source: GraphSource | None = None
        self._store: GraphStore | None = None

    @property
    def source(self) -> GraphSource:
        if self._source is None:
            d = self.data_config
            self._source = load_graphs(d.dataset, d.root, d.cache_dir, d.download, d.node_features,
                                       d.edge_attributes, d.max_degree, d.source, d.dataset_options)  # fmt: skip
        return self._source

    @property
    def has_labels(self) -> bool:
        return self.source.labels is not None  # TU graphs have class labels (used only by supervised losses)

    def build_encoder(self) -> Encoder:
        backbone = GraphBackbone(**self.backbone_arguments())
        encoder = Encoder(backbone, projection_head(**self.head_arguments(backbone.out_dim)))
        return xavier_init_(encoder) if self.model_config.xavier_init else encoder

    def backbone_arguments(self) -> dict:
        """:class:`GraphBackbone`'s constructor arguments (the node feature width read from the data)."""
        cfg = self.model_config
        return {"in_dim": self.source.num_features, "hidden_dim": cfg.hidden_dim, "num_layers": cfg.num_layers,
                "encoder": cfg.encoder, "pooling": cfg.pooling, "jumping_knowledge": cfg.jumping_knowledge,
                "batch_norm": cfg.batch_norm, "batch_norm_per_view": cfg.batch_norm_per_view}  # fmt: skip

    def head_arguments(self, width: int) -> dict:
        """:func:`projection_head`'s arguments for an embedding of ``width``."""
        cfg = self.model_config
        return {"in_dim": width, "hidden_dim": cfg.head_hidden_dim or width, "out_dim": cfg.head_dim or width,
                "layers": cfg.head_layers}  # fmt: skip

    def export(self, encoder: Encoder, folder: str | Path) -> Path:
        """The GNN's state dict with its constructor arguments (:mod:`mmcl.modalities.graph.export`)."""
        d, source = self.data_config, self.source
        node_features = {"kind": source.node_features, "num_features": source.num_features, "source": d.source,
                         "dataset": d.dataset, "max_degree": d.max_degree, "self_loops": d.self_loops}  # fmt: skip
        backbone = self.backbone_arguments()
        return export_encoder(encoder, folder, backbone, self.head_arguments(encoder.backbone.out_dim), node_features)

    @classmethod
    def load_export(cls, folder: str | Path) -> Encoder:
        return load_encoder(folder)

    def model_card(self, folder: Path) -> ModelCard:
        metadata = {"library_name": "mmcl", "tags": ["mmcl", "graph", "contrastive-learning", "torch-geometric"]}
        return ModelCard(metadata=metadata, usage=usage(folder))

    @property
    def unaugmented(self) -> Augmentation:
        """What an un-augmented graph goes through: nothing, or GraphCL's self-loops (``data.self_loops``)."""
        return AddSelfLoops() if self.data_config.self_loops else Identity()

    @property
    def on_device(self) -> bool:
        """Whether the views are drawn on whole batches on the training device (:mod:`.batched`)."""
        return self.data_config.augment_on != "loader"

    @property
    def items_are_random(self) -> bool:
        return not self.on_device  # on the device the items are indices

    def train_dataset(self) -> Dataset:
        if self.on_device:  # the loader only picks graphs: items (index, label), gathered from a flat store
            return GraphIndices(self.source)
        first = self.unaugmented if self.data_config.first_view_unaugmented else self.augmentation
        return GraphViews(self.source, first, self.augmentation)

    def collate_train(self, items: list) -> TrainBatch:
        if self.on_device:
            labels = torch.tensor([item[1] for item in items]) if self.has_labels else None
            return TrainBatch(self.store.gather(torch.tensor([item[0] for item in items])), n_views=2, labels=labels)
        n_views = len(items[0][0])
        batch = Batch.from_data_list([item[0][v] for v in range(n_views) for item in items])  # view-major
        batch.graph_view = torch.arange(n_views).repeat_interleave(len(items))  # for per-view batch norm
        labels = torch.tensor([item[1] for item in items]) if self.has_labels else None
        return TrainBatch(batch, n_views=n_views, labels=labels)

    @property
    def store(self) -> GraphStore:
        if self._store is None:
            self._store = GraphStore(self.source.graphs)
        return self._store

    def augment_batch(self, batch: TrainBatch) -> TrainBatch:
        """With views on the device: the graph itself (with GraphCL's self-loops when asked) or an augmented view,
        then an augmented view, as one view-major batch of ``2B`` graphs."""
        if not self.on_device:
            return batch
        original = batch.inputs
        if self.data_config.first_view_unaugmented:
            first = with_self_loops(original) if self.data_config.self_loops else original
        else:
            first = self.batched(original)
        return TrainBatch(view_major([first, self.batched(original)]), 2, batch.labels)

    def eval_datasets(self) -> dict[str, Dataset]:
        """``"all"``: the whole labelled dataset (graph classification); an error naming what is missing without
        graph labels."""
        if not self.has_labels:
            data = self.data_config
            where = f" (a TU dataset: {data.dataset}_graph_labels.txt in {data.root})" if data.source == "tu" else ""
            raise ValueError(
                f"the evaluation needs graph labels, and data.dataset={data.dataset} has none{where}; add them, or "
                "evaluate a dataset that has them"
            )
        return {"all": LabelledGraphs(self.source, self.unaugmented)}

    def validation_splits(self, fraction: float, seed: int) -> dict[str, Dataset]:
        """Graph classification validates by nested cross-validation on the whole dataset (each outer fold's
        training part, :mod:`mmcl.tasks.graph_classification`): no hold-out is drawn."""
        return self.eval_datasets()

    def collate_eval(self, items: list) -> tuple[Batch, Tensor]:
        return Batch.from_data_list([item[0] for item in items]), torch.tensor([item[1] for item in items])
