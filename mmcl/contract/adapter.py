"""The contract between the modality-agnostic engine and a modality (images, text, graphs).

The engine only ever talks to a :class:`ModalityAdapter`. An adapter provides

* an **encoder**: an ``nn.Module`` whose ``forward(inputs)`` returns the projection-head embeddings
  used by the loss ``(n, d)`` and whose ``features(inputs)`` returns the backbone features used for
  evaluation ``(n, f)``;
* the **pretraining data**: a ``Dataset`` and a ``collate_train`` that batches items into one
  :class:`TrainBatch`; the views are drawn either per item in ``__getitem__`` (data-loader workers do the
  work) or on whole batches on the training device by ``augment_batch``;
* the **evaluation data**: un-augmented labelled splits (``"train"``, ``"test"``) and
  ``collate_eval`` returning ``(inputs, labels)``;
* optionally, ``validation`` (a registered evaluation task and the score of its result that checkpoint
  selection maximises, for ``train.validate_every``), ``export`` (the trained encoder in its ecosystem's
  format, with the manifest of :mod:`mmcl.contract.export`), ``load_export`` (that folder read back) and
  ``model_card`` (what the modality adds to the model card the engine writes beside the export).

All views of a batch travel as *one* input (view-major: the ``B`` first views, then the ``B``
second views, then optional hard negatives), so the encoder runs once per step: batch-norm sees the
whole batch, as in SimCLR, and DDP sees one forward per backward. Inputs are whatever the encoder
takes (an image tensor, a tokenizer dict, a PyG ``Batch``); they must support ``.to(device)`` or be
nested lists/dicts of tensors, so that Accelerate can place them. Views of several sizes (multi-crop) travel as
:class:`ViewGroups`, one view-major input per size, and the encoder's backbone runs once per group.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcl.contract.splits import class_labels, holdout_splits


class ViewGroups(tuple):
    """The views of a batch in groups of one input size (multi-crop: the global crops, then the local crops), each
    group a view-major input of its own, in view order. :meth:`Encoder.features` runs the backbone once per group
    (so batch norm sees each crop size apart, as DINO's ``MultiCropWrapper`` does) and concatenates the features."""

    def to(self, device) -> ViewGroups:
        return ViewGroups(group.to(device) for group in self)


@dataclass
class TrainBatch:
    """One pretraining batch of ``B`` instances."""

    inputs: Any  # all views (and negatives) of the batch, view-major, as one encoder input (or ViewGroups)
    n_views: int  # V >= 2
    labels: Tensor | None = None  # (B,) class ids where the dataset has them (supervised losses)
    has_negatives: bool = False  # the last B rows of ``inputs`` are hard negatives (text NLI)
    #: Multi-crop's rule: only the first ``global_views`` views are the candidates of the loss (SwAV/DINO: local
    #: crops are contrasted with the global ones only); None: every view with every other.
    global_views: int | None = None

    def to(self, device) -> TrainBatch:
        inputs = self.inputs.to(device) if hasattr(self.inputs, "to") else self.inputs
        labels = self.labels.to(device) if self.labels is not None else None
        return dataclasses.replace(self, inputs=inputs, labels=labels)


class Encoder(nn.Module):
    """Backbone plus projection head. ``forward`` gives the loss embeddings, ``features`` the backbone's."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, inputs: Any) -> Tensor:
        if isinstance(inputs, ViewGroups):
            return torch.cat([self.backbone(group) for group in inputs])
        return self.backbone(inputs)

    def forward(self, inputs: Any) -> Tensor:
        return self.head(self.features(inputs))


@dataclass(frozen=True)
class Validation:
    """How a modality scores checkpoints during training: a registered evaluation ``task`` run with ``options``
    on top of the config's ``eval.<task>`` options, maximising the result's ``metric`` (dotted key), logged as
    ``val_<name>``."""

    task: str
    options: dict
    metric: str
    name: str


@dataclass(frozen=True)
class ModelCard:
    """What a modality adds to the model card (``RUN/model/README.md``) that the engine writes beside its export:
    Hugging Face card ``metadata`` (the YAML front matter: ``library_name``, ``tags``, ``pipeline_tag``, ...) and
    ``usage``, Markdown showing how the export loads in its ecosystem's own tools. The engine adds the training
    (config, loss, data, budget) and the evaluation results."""

    metadata: dict = field(default_factory=dict)
    usage: str = ""


class ModalityAdapter(ABC):
    """Base class of modality adapters, registered by name with :func:`mmcl.modalities.register_modality`.

    ``model_options`` and ``data_options`` are the config's ``model`` and ``data`` sections; each
    adapter declares their keys and defaults as dataclasses (``ModelConfig``, ``DataConfig``) so the
    config loader can validate them.
    """

    name: ClassVar[str]
    ModelConfig: ClassVar[type]
    DataConfig: ClassVar[type]
    default_eval_tasks: ClassVar[tuple[str, ...]] = ("knn", "linear", "metrics")  # registered task names
    #: The loss a config without ``loss.name`` trains with (a registered loss name).
    default_loss: ClassVar[str] = "nt_xent"
    #: What ``train.validate_every`` runs and maximises; None: the modality has no validation.
    validation: ClassVar[Validation | None] = None

    def __init__(self, model: Any, data: Any) -> None:
        self.model_config = model
        self.data_config = data

    #: Whether the evaluation scores the pretraining items themselves (graph classification's cross-validation over
    #: the whole dataset): then a supervised loss would see the test labels, and the engine refuses it by default.
    evaluates_pretraining_items: ClassVar[bool] = False
    #: Whether the views of an item differ only by the encoder's dropout (SimCSE): representation metrics then
    #: embed the two views with dropout on, as training does.
    dropout_views: ClassVar[bool] = False

    @abstractmethod
    def build_encoder(self) -> Encoder:
        """The encoder to pretrain: randomly initialised, or from pretrained weights where the modality starts there
        (a Hugging Face text model)."""

    def build_random_encoder(self) -> Encoder:
        """The same encoder with freshly initialised weights, the baseline of ``mmcl evaluate --random-init``."""
        return self.build_encoder()

    @abstractmethod
    def train_dataset(self) -> Dataset: ...

    @abstractmethod
    def collate_train(self, items: list) -> TrainBatch: ...

    def augment_batch(self, batch: TrainBatch) -> TrainBatch:
        """The views of a collated batch, drawn on the training device where the modality does that (images with
        kornia); the default returns the batch as collated (its views were drawn in the data loader). The engine
        calls it on every batch after seeding torch's generator by (seed, step, rank)."""
        return batch

    @abstractmethod
    def eval_datasets(self) -> dict[str, Dataset]:
        """Un-augmented labelled splits by name (``"train"``/``"test"`` for the classification tasks);
        items ``(input, label)``."""

    @abstractmethod
    def collate_eval(self, items: list) -> tuple[Any, Tensor]: ...

    def validation_splits(self, fraction: float, seed: int) -> dict[str, Dataset]:
        """``"train"``/``"test"`` drawn from the ``"train"`` evaluation split alone, for tuning and checkpoint
        selection: a stratified, seeded hold-out of ``fraction`` of it is the ``"test"`` part; the test split is
        never read (:mod:`mmcl.contract.splits`)."""
        train = self.eval_datasets()["train"]
        return holdout_splits(train, class_labels(train), fraction, seed)

    def export(self, encoder: Encoder, folder: Path) -> Path | None:
        """Write the trained encoder in its ecosystem's own format at the end of a run (None: nothing to write),
        with the manifest (:func:`mmcl.contract.export.write_manifest`) that :meth:`load_export` reads."""
        return None

    @classmethod
    def load_export(cls, folder: Path) -> Encoder:
        """The encoder of an export folder written by :meth:`export`, in eval mode (``mmcl.load_encoder``)."""
        raise NotImplementedError(f"the {cls.name} modality does not read export folders; load its checkpoint instead")

    def model_card(self, folder: Path) -> ModelCard:
        """The modality's part of the model card of the export in ``folder`` (default: loading it with mmcl)."""
        usage = (
            "```python\nimport mmcl\n\n"
            f"encoder = mmcl.load_encoder({str(folder)!r})\n"
            "# encoder(x): the projection head's embeddings; encoder.features(x): the backbone's\n```"
        )
        return ModelCard(metadata={"library_name": "mmcl", "tags": ["mmcl", self.name]}, usage=usage)

    @property
    def items_are_random(self) -> bool:
        """Whether the items of :meth:`train_dataset` draw random numbers (views drawn per item): the engine then
        seeds each item by (seed, epoch, index); items that are plain decodes (views drawn by :meth:`augment_batch`)
        need no seeding."""
        return True

    @property
    def n_views(self) -> int:
        """How many views of each instance a pretraining batch holds (the engine checks the loss takes them)."""
        return 2

    @property
    def has_labels(self) -> bool:
        """Whether the pretraining items carry class labels (for supervised losses)."""
        return False
