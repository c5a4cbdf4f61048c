"""Evaluation tasks: linear probe, kNN, STS, graph classification and representation metrics.

The numerical functions (``knn_accuracy``, ``linear_probe``, ``representation_metrics``, ...) take plain
feature tensors; the registered tasks (``available_tasks()``) run them on a frozen encoder for
``mmcl evaluate``.
"""

from mmcl.tasks.knn import KNN_PRESETS, knn_accuracy, knn_predict
from mmcl.tasks.linear_probe import LINEAR_PRESETS, LinearPreset, linear_probe
from mmcl.tasks.metrics import (
    alignment,
    effective_rank,
    rank,
    representation_metrics,
    uniformity,
    wasserstein_uniformity,
)
from mmcl.tasks.registry import EvalContext, available_tasks, get_task, register_task

__all__ = [
    "KNN_PRESETS",
    "LINEAR_PRESETS",
    "EvalContext",
    "LinearPreset",
    "alignment",
    "available_tasks",
    "effective_rank",
    "get_task",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "rank",
    "register_task",
    "representation_metrics",
    "uniformity",
    "wasserstein_uniformity",
]
