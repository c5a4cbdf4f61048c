"""Modality adapters: vision, text and graph encoders with their views and datasets."""

import mmcl  # noqa: F401  (runs the torchvision compatibility step first)
