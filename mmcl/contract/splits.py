"""Validation data drawn from the training split alone: a stratified, seeded hold-out (scikit-learn's
``train_test_split``), so that tuning and checkpoint selection never read the test split.

>>> from torch.utils.data import TensorDataset
>>> import torch
>>> data = TensorDataset(torch.arange(20), torch.tensor([0] * 10 + [1] * 10))
>>> splits = holdout_splits(data, class_labels(data), fraction=0.2, seed=0)
>>> len(splits["train"]), len(splits["test"]), sorted(int(data[i][1]) for i in splits["test"].indices)
(16, 4, [0, 0, 1, 1])
"""

from __future__ import annotations

from torch.utils.data import Dataset, Subset


def class_labels(dataset: Dataset) -> list[int]:
    """The class label of every item of a labelled dataset (items ``(input, label)``): read from the labels the
    dataset keeps (``labels``/``targets``, through ``Subset`` and ``dataset`` wrappers) where it keeps them, else by
    reading each item."""
    if isinstance(dataset, Subset):
        labels = class_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None and len(labels) == len(dataset):
            return [int(label) for label in labels]
    inner = getattr(dataset, "dataset", None)
    if isinstance(inner, Dataset) and len(inner) == len(dataset):  # a wrapper that transforms the inputs only
        return class_labels(inner)
    return [int(dataset[i][1]) for i in range(len(dataset))]


def holdout_splits(dataset: Dataset, labels: list[int], fraction: float, seed: int) -> dict[str, Subset]:
    """``{"train": the rest, "test": a stratified hold-out of fraction of the items}`` of ``dataset``."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction!r}")
    classes = len(set(labels))
    held = round(fraction * len(labels))
    if held < classes or len(labels) - held < classes:
        raise ValueError(
            f"a validation hold-out of {fraction:g} of {len(labels)} items ({held}) cannot hold every one of the "
            f"{classes} classes on both sides; raise or lower the fraction (tune.validation_fraction)"
        )
    rest, holdout = train_test_split(list(range(len(labels))), test_size=held, random_state=seed, stratify=labels)
    return {"train": Subset(dataset, sorted(rest)), "test": Subset(dataset, sorted(holdout))}
