"""Images: torchvision backbones (ResNet, ViT, a small CNN), SimCLR views (transforms v2), image datasets.

Your own backbone or dataset is one decorated function (:func:`register_backbone`, :func:`register_dataset`),
then named in a config (``model.backbone``, ``data.dataset``).
"""

from mmcl.contract import ensure_torchvision_ops

ensure_torchvision_ops()  # before torchvision or transformers is imported (CPU-only torch: mmcl/contract/compat.py)

# isort: split

from mmcl.modalities.vision.adapter import VisionAdapter
from mmcl.modalities.vision.backbones import available_backbones, build_backbone, build_head, register_backbone
from mmcl.modalities.vision.datasets import (
    ImageSource,
    TensorImages,
    available_datasets,
    cache_folder,
    load_source,
    register_dataset,
    require_root,
)
from mmcl.modalities.vision.transforms import VIEW_PRESETS, simclr_view

__all__ = [
    "VIEW_PRESETS",
    "ImageSource",
    "TensorImages",
    "VisionAdapter",
    "available_backbones",
    "available_datasets",
    "build_backbone",
    "build_head",
    "cache_folder",
    "load_source",
    "register_backbone",
    "register_dataset",
    "require_root",
    "simclr_view",
]
