"""Evaluation tasks: linear probe, kNN, STS, graph classification and representation metrics."""

import mmcl  # noqa: F401  (runs the torchvision compatibility step first)
