"""Images: torchvision backbones (ResNet, ViT, a small CNN), SimCLR views (transforms v2), image datasets."""

from modalities.vision.adapter import VisionAdapter
from modalities.vision.backbones import available_backbones, build_backbone, build_head
from modalities.vision.datasets import load_source
from modalities.vision.transforms import VIEW_PRESETS, simclr_view

__all__ = [
    "VIEW_PRESETS",
    "VisionAdapter",
    "available_backbones",
    "build_backbone",
    "build_head",
    "load_source",
    "simclr_view",
]
