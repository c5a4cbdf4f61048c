"""The ``vision`` modality: torchvision backbones, SimCLR views and image datasets behind the adapter contract.

Example config (the packaged ``vision/cifar10``)::

    modality: vision
    model: {backbone: resnet18, backbone_options: {cifar_stem: true}, head_layers: 2, head_dim: 128}
    data: {dataset: cifar10, root: data, augment: auto}
    loss: {name: nt_xent, temperature: 0.5}
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mmcl.contract import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Range, Seed
from mmcl.contract.adapter import Encoder, ModalityAdapter, ModelCard, TrainBatch, ViewGroups
from mmcl.modalities import register_modality
from mmcl.modalities.vision.backbones import backbone_options, build_backbone, build_head
from mmcl.modalities.vision.datasets import ImageSource, load_source, seeded_subset
from mmcl.modalities.vision.export import export_encoder, load_encoder, usage
from mmcl.modalities.vision.transforms import (
    BatchViews,
    CropGroup,
    ViewSettings,
    crop_groups,
    eval_transform,
    simclr_view,
    view_settings,
)


@dataclass
class VisionModelConfig:
    backbone: str = "resnet18"  # small_cnn | resnet18 | resnet50 | vit_tiny | vit
    backbone_options: dict = field(default_factory=dict)  # e.g. {cifar_stem: true}, {channels: [32, 64]}
    head_layers: NonNegativeInt = 2  # SimCLR: Linear-BN-ReLU-Linear; 0 = no head
    head_hidden_dim: PositiveInt | None = None  # default: the backbone's feature dimension (SimCLR)
    head_dim: PositiveInt = 128
    head_batch_norm: bool = True


@dataclass
class VisionDataConfig:
    dataset: str = "digits"  # digits | mnist | fashion_mnist | cifar10 | cifar100 | stl10 | imagefolder | a plug-in's
    root: str | None = None  # the folder holding the dataset's files (digits: none needed)
    dataset_options: dict = field(default_factory=dict)  # options of a plug-in dataset's loader
    download: bool = False
    cache_dir: str | None = None  # where .gz/.zip sources are unpacked (default ~/.cache/mmcl)
    image_size: PositiveInt | None = None  # ImageFolder view size (default 224; other datasets use their native size)
    train_subset: PositiveInt | None = None  # seeded subset sizes (quick runs)
    test_subset: PositiveInt | None = None
    subset_seed: Seed = 0
    n_views: Annotated[int, Range(ge=2)] = 2
    # Multi-crop: groups of views {count, size, crop_min_scale, crop_max_scale}, the first entry the global crops;
    # replaces n_views. local_to_global_only: local crops are contrasted with the global ones only (SwAV/DINO).
    views: list[dict] | None = None
    local_to_global_only: bool = False
    augment: str = "auto"  # a view preset (digits, 28, 32, 96, 224), none, or auto (by image size)
    augment_on: Literal["auto", "loader", "device"] = "auto"  # auto: device for images of one size, else loader
    crop_min_scale: Annotated[float, Range(gt=0, le=1)] | None = None  # overrides of the preset's entries
    flip_prob: Fraction | None = None
    jitter_strength: NonNegativeFloat | None = None
    jitter_prob: Fraction | None = None
    grayscale_prob: Fraction | None = None
    blur_prob: Fraction | None = None
    solarize_prob: Fraction | None = None


#: The data keys that override entries of the view preset (``data.flip_prob``, ...): those named as the preset's.
VIEW_OVERRIDES = tuple(
    f.name for f in dataclasses.fields(ViewSettings) if f.name in {g.name for g in dataclasses.fields(VisionDataConfig)}
)


class MultiView(Dataset):
    """Items ``([view_1, ..., view_V], label)`` drawn from ``(image, label)`` items, view ``v`` by ``transforms[v]``."""

    def __init__(self, dataset: Dataset, transforms: list) -> None:
        self.dataset, self.transforms = dataset, transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[list[Tensor], int]:
        image, label = self.dataset[index]
        return [transform(image) for transform in self.transforms], label


def grouped_by_size(views: list[Tensor]) -> Tensor | ViewGroups:
    """View-major input of views ``(B, C, H_v, W_v)``: one tensor where they share a size, else one group per run of
    consecutive views of one size (multi-crop), which the encoder's backbone takes one at a time."""
    groups: list[list[Tensor]] = []
    for view in views:
        if groups and groups[-1][0].shape[1:] == view.shape[1:]:
            groups[-1].append(view)
        else:
            groups.append([view])
    stacked = [torch.cat(group) for group in groups]
    return stacked[0] if len(stacked) == 1 else ViewGroups(stacked)


class Transformed(Dataset):
    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


def as_image_tensor(image) -> Tensor:
    """A ``(C, H, W)`` uint8 tensor of an image: a tensor as it is (the fast path), a PIL image converted."""
    return image if isinstance(image, Tensor) else v2.functional.pil_to_tensor(image)


@register_modality
class VisionAdapter(ModalityAdapter):
    """Images: a torchvision backbone plus SimCLR head, SimCLR views, torchvision datasets."""

    name = "vision"
    ModelConfig = VisionModelConfig
    DataConfig = VisionDataConfig

    def __init__(self, model: VisionModelConfig, data: VisionDataConfig) -> None:
        super().__init__(model, data)
        backbone_options(model.backbone)  # an unknown backbone fails here, before any data is read
        if data.views is not None and data.n_views != 2:
            raise ValueError(
                f"data.n_views={data.n_views} and data.views are both set; data.views gives the number of views "
                "(the sum of its counts): unset data.n_views"
            )
        if data.local_to_global_only and data.views is None:
            raise ValueError("data.local_to_global_only=true needs multi-crop's data.views (global and local crops)")
        self._source: ImageSource | None = None
        self._batch_views: list[BatchViews] | None = None

    @property
    def source(self) -> ImageSource:
        if self._source is None:
            d = self.data_config
            options = dict(d.dataset_options) | ({"size": d.image_size} if d.image_size is not None else {})
            self._source = load_source(d.dataset, d.root, d.cache_dir, d.download, **options)
        return self._source

    @property
    def has_labels(self) -> bool:
        return self.source.labelled

    @property
    def items_are_random(self) -> bool:
        return not self.on_device  # on the device the loader only decodes

    @property
    def n_views(self) -> int:
        return self.n_views_of(self.crop_groups())

    def crop_groups(self) -> list[CropGroup]:
        """The groups of views of each image: ``data.views``, or ``data.n_views`` views of the preset."""
        return self._crop_groups

    @functools.cached_property
    def _crop_groups(self) -> list[CropGroup]:
        # read by every collate and every augment_batch: checked and built once
        d, settings = self.data_config, self._settings()
        if d.views is None:
            return [CropGroup(d.n_views, settings)]
        if settings is None:
            raise ValueError("data.views (multi-crop) needs augmentations; data.augment=none draws no crops")
        groups = crop_groups(d.views, settings)
        sizes = {group.settings.size for group in groups}
        if len(sizes) > 1 and "image_size" in backbone_options(self.model_config.backbone):
            raise ValueError(
                f"data.views has crops of sizes {sorted(sizes)}, and model.backbone={self.model_config.backbone} "
                "takes one image size; use one size for every crop, or a convolutional backbone"
            )
        if d.local_to_global_only and not 2 <= groups[0].count < self.n_views_of(groups):
            raise ValueError(
                f"data.local_to_global_only=true: the first entry of data.views holds the global crops, at least 2 "
                f"and fewer than all views; it has {groups[0].count} of {self.n_views_of(groups)}"
            )
        return groups

    @staticmethod
    def n_views_of(groups: list[CropGroup]) -> int:
        return sum(group.count for group in groups)

    def _global_views(self) -> int | None:
        return self.crop_groups()[0].count if self.data_config.local_to_global_only else None

    def _preset(self) -> str:
        augment = self.data_config.augment
        if augment != "auto":
            return augment
        size = self.source.size
        return "digits" if size <= 8 else min(("28", "32", "96", "224"), key=lambda p: abs(int(p) - size))

    def build_encoder(self) -> Encoder:
        spec = self.backbone_arguments()
        backbone, feature_dim = build_backbone(spec["name"], spec["in_channels"], **spec["options"])
        head = self.head_arguments(feature_dim)
        return Encoder(backbone, build_head(**head))

    def backbone_arguments(self) -> dict:
        """``{name, in_channels, options}`` of :func:`build_backbone`, with the options the data decide filled in."""
        cfg, source = self.model_config, self.source
        options = dict(cfg.backbone_options)
        accepted = backbone_options(cfg.backbone)
        if "image_size" in accepted:
            options.setdefault("image_size", source.size)
        if "cifar_stem" in accepted:
            options.setdefault("cifar_stem", source.size <= 64)  # 7x7/2 conv + max-pool would erase small images
        return {"name": cfg.backbone, "in_channels": source.channels, "options": options}

    def head_arguments(self, feature_dim: int) -> dict:
        """:func:`build_head`'s arguments for a backbone of ``feature_dim`` features."""
        cfg = self.model_config
        return {"in_dim": feature_dim, "hidden_dim": cfg.head_hidden_dim or feature_dim, "out_dim": cfg.head_dim,
                "num_layers": cfg.head_layers, "batch_norm": cfg.head_batch_norm}  # fmt: skip

    def export(self, encoder: Encoder, folder: str | Path) -> Path:
        """The backbone in torchvision's layout, the head and their options (:mod:`mmcl.modalities.vision.export`)."""
        source = self.source
        backbone = self.backbone_arguments()
        feature_dim = self._feature_dim(encoder)
        preprocess = {"image_size": source.size, "channels": source.channels, "mean": list(source.mean),
                      "std": list(source.std), "resize": source.resize_for_eval}  # fmt: skip
        return export_encoder(encoder, folder, backbone, self.head_arguments(feature_dim), preprocess)

    @torch.no_grad()
    def _feature_dim(self, encoder: Encoder) -> int:
        """The backbone's feature width, from one blank image in eval mode (batch norm statistics untouched)."""
        was_training = encoder.training
        encoder.eval()
        try:
            device = next(encoder.parameters()).device
            image = torch.zeros(1, self.source.channels, self.source.size, self.source.size, device=device)
            return int(encoder.features(image).shape[1])
        finally:
            encoder.train(was_training)

    @classmethod
    def load_export(cls, folder: str | Path) -> Encoder:
        return load_encoder(folder)

    def model_card(self, folder: Path) -> ModelCard:
        tags = ["mmcl", "vision", "contrastive-learning", "image-feature-extraction"]
        metadata = {"library_name": "mmcl", "tags": tags, "pipeline_tag": "image-feature-extraction"}
        return ModelCard(metadata=metadata, usage=usage(folder))

    def _settings(self) -> ViewSettings | None:
        """The view settings of the preset with the config's overrides; None for ``data.augment=none``."""
        source, preset = self.source, self._preset()
        if preset == "none":
            return None
        overrides = {name: getattr(self.data_config, name) for name in VIEW_OVERRIDES}
        return view_settings(preset, size=source.size if preset != "digits" else None, **overrides)

    @property
    def on_device(self) -> bool:
        """Whether the views are drawn on the training device (:class:`BatchViews`) rather than per item."""
        mode = self.data_config.augment_on
        if mode == "auto":  # images of varying size (ImageFolder) cannot be stacked before cropping
            return not self.source.resize_for_eval and self._settings() is not None
        return mode == "device" and self._settings() is not None

    def view_transform(self, settings: ViewSettings | None = None):
        """The per-item view (``data.augment_on=loader``): SimCLR's augmentations with ``settings`` (default: the
        preset's), or the evaluation transform for ``data.augment=none``."""
        source, settings = self.source, settings or self._settings()
        if settings is None:
            return eval_transform(source.size, source.mean, source.std, resize=source.resize_for_eval)
        return simclr_view(settings, source.channels, source.mean, source.std)

    def train_dataset(self) -> Dataset:
        d = self.data_config
        data = seeded_subset(self.source.pretrain, d.train_subset, d.subset_seed)
        if self.on_device:  # the loader only decodes: items (uint8 image, label)
            return Transformed(data, as_image_tensor)
        transforms = [self.view_transform(group.settings) for group in self.crop_groups() for _ in range(group.count)]
        return MultiView(data, transforms)

    def collate_train(self, items: list) -> TrainBatch:
        labels = torch.tensor([item[1] for item in items]) if self.has_labels else None
        if self.on_device:
            sizes = {tuple(item[0].shape) for item in items}
            if len(sizes) > 1:
                raise ValueError(
                    f"data.augment_on=device needs images of one size to stack them, got {sorted(sizes)[:3]}...; "
                    "set data.augment_on=loader to draw the views per image in the data loader"
                )
            images = torch.stack([item[0] for item in items])
            return TrainBatch(images, self.n_views, labels=labels, global_views=self._global_views())
        views = [torch.stack([item[0][v] for item in items]) for v in range(len(items[0][0]))]
        return TrainBatch(grouped_by_size(views), len(views), labels=labels, global_views=self._global_views())

    def augment_batch(self, batch: TrainBatch) -> TrainBatch:
        """With views on the device: every view of every image, view-major, on the batch's device."""
        if not self.on_device:
            return batch
        if self._batch_views is None:
            source = self.source
            self._batch_views = [
                BatchViews(group.settings, source.channels, source.mean, source.std) for group in self.crop_groups()
            ]
        views = [
            draw(batch.inputs)
            for draw, group in zip(self._batch_views, self.crop_groups(), strict=True)
            for _ in range(group.count)
        ]
        return dataclasses.replace(batch, inputs=grouped_by_size(views))

    def eval_datasets(self) -> dict[str, Dataset]:
        d, source = self.data_config, self.source
        transform = eval_transform(source.size, source.mean, source.std, resize=source.resize_for_eval)
        return {
            "train": Transformed(seeded_subset(source.eval_train, d.train_subset, d.subset_seed), transform),
            "test": Transformed(seeded_subset(source.eval_test, d.test_subset, d.subset_seed), transform),
        }

    def collate_eval(self, items: list) -> tuple[Tensor, Tensor]:
        return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])
