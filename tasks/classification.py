"""Engine-facing classification tasks on frozen backbone features: ``knn``, ``linear`` and ``metrics``.

``knn`` and ``linear`` fit on the adapter's ``"train"`` evaluation split and score its ``"test"`` split
(no augmentation; evaluation spec, sections 1-2). ``metrics`` reports alignment, uniformity and effective
rank (spec, sections 5-8) of the backbone features and of the projection head, on two augmented views of
up to ``pairs`` training items drawn with the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal

import torch
from torch.utils.data import DataLoader, Subset

from mmcl.contract import PositiveFloat, PositiveInt, Range, SeededViews
from mmcl.tasks.knn import knn_accuracy
from mmcl.tasks.linear_probe import linear_probe
from mmcl.tasks.metrics import representation_metrics
from mmcl.tasks.registry import EvalContext, register_task

#: What kNN and the linear probe score in validation mode (tuning, checkpoint selection).
HOLDOUT_VALIDATION = (
    "the same protocol on a stratified hold-out of the training split (eval.validation_fraction), fitted on the rest"
)


@dataclass
class KNNOptions:
    k: PositiveInt = 200
    temperature: PositiveFloat = 0.1


@dataclass
class LinearOptions:
    method: Literal["torch", "logreg"] = "torch"
    preset: str = "hcl"
    epochs: PositiveInt | None = None  # the preset's (100 for hcl) when None
    standardize: bool = False


@dataclass
class MetricsOptions:
    pairs: Annotated[int, Range(ge=2)] = 2048


def _splits(context: EvalContext) -> tuple[dict, dict, int]:
    train, test = context.embed("train"), context.embed("test")
    num_classes = int(max(train["labels"].max(), test["labels"].max())) + 1
    return train, test, num_classes


@register_task(
    "knn",
    KNNOptions,
    headline=("top1",),
    primary="top1",
    protocol="weighted kNN top-1 (%) on frozen backbone features (k={k}, T={temperature}), train -> test split",
    validation=HOLDOUT_VALIDATION,
)
def knn(context: EvalContext, options: KNNOptions) -> dict:
    train, test, num_classes = _splits(context)
    return knn_accuracy(
        train["features"],
        train["labels"],
        test["features"],
        test["labels"],
        num_classes,
        k=options.k,
        temperature=options.temperature,
    )


@register_task(
    "linear",
    LinearOptions,
    headline=("top1",),
    primary="top1",
    protocol="linear probe top-1 (%) on frozen backbone features ({method}, preset {preset}), train -> test split",
    validation=HOLDOUT_VALIDATION,
)
def linear(context: EvalContext, options: LinearOptions) -> dict:
    train, test, num_classes = _splits(context)
    settings = {"method": options.method, "seed": context.seed, "standardize": options.standardize}
    if options.method == "torch":
        settings.update(preset=options.preset, epochs=options.epochs, progress=partial(context.progress, what="epochs"))
    return linear_probe(train["features"], train["labels"], test["features"], test["labels"], num_classes, **settings)


@register_task(
    "metrics",
    MetricsOptions,
    headline=("backbone.alignment", "backbone.uniformity", "backbone.effective_rank"),
    protocol="alignment, uniformity and effective rank on two views of {pairs} training items",
)
def metrics(context: EvalContext, options: MetricsOptions) -> dict:
    pairs = embed_view_pairs(context, options.pairs)
    return {
        layer: representation_metrics(pairs[f"{layer}_a"], pairs[f"{layer}_b"], seed=context.seed)
        for layer in ("backbone", "head")
    }


@torch.no_grad()
def embed_view_pairs(context: EvalContext, count: int) -> dict[str, torch.Tensor]:
    """Two augmented views of the first ``count`` training items: ``{backbone,head}_{a,b}`` of shape (n, *).

    Views that differ by dropout only (text, SimCSE) are embedded with dropout on, seeded, as in training.
    """
    adapter = context.adapter
    encoder = context.encoder.train(adapter.dropout_views)
    data = SeededViews(adapter.train_dataset(), context.seed)
    subset = Subset(data, range(min(count, len(data))))
    out: dict[str, list] = {"backbone_a": [], "backbone_b": [], "head_a": [], "head_b": []}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        loader = DataLoader(subset, batch_size=context.batch_size, shuffle=False, collate_fn=adapter.collate_train)
        for batch in context.progress(loader, "embed two views"):
            batch = adapter.augment_batch(batch.to(context.device))
            feature = encoder.features(batch.inputs)
            for layer, value in (("backbone", feature), ("head", encoder.head(feature))):
                first, second = value.float().cpu().chunk(batch.n_views + int(batch.has_negatives))[:2]
                out[f"{layer}_a"].append(first)
                out[f"{layer}_b"].append(second)
    encoder.eval()
    return {key: torch.cat(value) for key, value in out.items()}
