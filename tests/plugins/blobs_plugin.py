"""A plug-in outside the mmcl package, as a user writes one: an MLP image backbone and a synthetic image dataset.

Used by ``tests/test_plugins.py`` through ``--plugin``, an ``mmcl.plugins`` entry point and a plain import.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcl.modalities.vision import ImageSource, TensorImages, register_backbone, register_dataset


@register_backbone("test_mlp")
def test_mlp(in_channels: int, image_size: int = 8, hidden: int = 32) -> tuple[nn.Module, int]:
    """Flatten, one hidden layer; ``image_size`` is filled in by the vision adapter."""
    layers = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU())
    return layers, hidden


@register_dataset("test_blobs")
def test_blobs(root, cache_dir, download, count: int = 240, classes: int = 4, seed: int = 0) -> ImageSource:
    """``count`` 8x8 grey images: one random pattern per class plus noise; the first three quarters train."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % classes
    patterns = torch.rand(classes, 1, 8, 8, generator=generator) * 255
    noise = 25 * torch.randn(count, 1, 8, 8, generator=generator)
    images = (patterns[labels] + noise).clamp(0, 255).round().to(torch.uint8)
    cut = count * 3 // 4
    train, test = TensorImages(images[:cut], labels[:cut]), TensorImages(images[cut:], labels[cut:])
    return ImageSource(train, train, test, channels=1, size=8, mean=(0.5,), std=(0.3,), labelled=True)
