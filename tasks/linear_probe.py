"""Linear probe on frozen, pre-computed features (evaluation spec, section 1, offline mode).

A linear layer ``W x + b`` is trained with cross-entropy on the training features and scored on the test
features: top-1 and (with >= 5 classes) top-5 accuracy in percent, at the final epoch. Two methods:

* ``method="torch"`` (default): mini-batch training with the optimiser settings of a preset
  (``LINEAR_PRESETS``), each overridable. ``preset="hcl"`` (Adam, lr 1e-3, weight decay 1e-6, 100 epochs,
  batch 512; joshr17/HCL, rjiang03/H-SCL, chingyaoc/DCL) is the default; entries the spec marks as not
  recorded in the sources (``None`` in the table) must be passed explicitly. Constant learning rate.
* ``method="logreg"``: scikit-learn's multinomial ``LogisticRegression(solver="lbfgs")`` (L2 penalty ``C``):
  deterministic and fast on small feature sets; not a published protocol.

On a small CPU run (a few thousand rows, a few hundred features) the ``hcl`` preset takes about a second,
so the default is the published protocol; a quick run may lower ``epochs``.

Everything is seeded (weight initialisation and batch order use a private ``torch.Generator``; the global
RNG is untouched). Features are used as given unless ``standardize=True`` (per-feature mean and standard
deviation of the training split, applied to both splits); the choice is recorded in the result.

Example:
    >>> import torch
    >>> from mmcl.tasks import linear_probe
    >>> x, y = torch.randn(200, 16), torch.randint(0, 3, (200,))
    >>> result = linear_probe(x[:150], y[:150], x[150:], y[150:], epochs=5)
    >>> result["preset"], result["epochs"]
    ('hcl', 5)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl.contract import Progress, no_progress
from mmcl.tasks._common import ArrayLike, as_feature_pair, as_labels, infer_num_classes, topk_accuracies


@dataclass(frozen=True)
class LinearPreset:
    """Optimiser settings of a published linear-probe protocol; ``None`` = not recorded in the source."""

    optimizer: Literal["adam", "sgd"] | None
    lr: float | None
    weight_decay: float | None
    epochs: int | None
    batch_size: int | None
    source: str


LINEAR_PRESETS: dict[str, LinearPreset] = {
    "hcl": LinearPreset(
        "adam", 1e-3, 1e-6, 100, 512, "HCL, H-SCL, debiased [code: joshr17/HCL, rjiang03/H-SCL, chingyaoc/DCL]"
    ),
    "supcon": LinearPreset(
        "sgd",
        None,
        None,
        None,
        512,
        "[readme: HobbitLong/SupContrast]: lr 5 (SupCon) or 1 (SimCLR); weight decay and epochs not recorded",
    ),
    "kcl": LinearPreset("sgd", 30.0, 0.0, 100, 256, "Waida et al. [appendix]"),
    "dystress": LinearPreset(None, None, None, 100, 512, "[code: sadimanna/DySTreSS]; optimiser not recorded"),
    "simclr_imagenet": LinearPreset(
        None,
        None,
        None,
        None,
        None,
        "SimCLR paper protocol as used by lightly's ImageNet benchmark; details unconfirmed: set every entry",
    ),
}
#: Presets of the spec that are not a probe on pre-computed features.
OTHER_PROTOCOLS = {"online": "the online probe is trained during pre-training (solo-learn); it is the trainer's job"}

#: SGD momentum when not given (not part of the spec's preset table; recorded in the result).
SGD_MOMENTUM = 0.9


def _resolve(preset: str, **overrides) -> dict:
    if preset in OTHER_PROTOCOLS:
        raise ValueError(f"preset {preset!r} is not a probe on pre-computed features: {OTHER_PROTOCOLS[preset]}")
    if preset not in LINEAR_PRESETS:
        raise ValueError(f"preset must be one of {sorted(LINEAR_PRESETS)}, got {preset!r}")
    settings = asdict(LINEAR_PRESETS[preset])
    source = settings.pop("source")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k, v in settings.items() if v is None]
    if missing:
        raise ValueError(f"preset {preset!r} does not record {', '.join(missing)} ({source}); pass them explicitly")
    settings["optimizer"] = str(settings["optimizer"]).lower()
    if settings["optimizer"] not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {settings['optimizer']!r}")
    for key in ("epochs", "batch_size"):
        value = settings[key]
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        settings[key] = int(value)
    if not float(settings["lr"]) > 0 or not float(settings["weight_decay"]) >= 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {settings['lr']!r}, {settings['weight_decay']!r}")
    return settings


def standardise(train: Tensor, test: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Per-feature ``(x - mean) / std`` with the training split's statistics, for ``(M, F)`` and ``(Q, F)``."""
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(eps)
    return (train - mean) / std, (test - mean) / std


def _train_torch(
    x: Tensor, y: Tensor, x_test: Tensor, num_classes: int, settings: dict, momentum: float, seed: int,
    progress: Progress,
) -> tuple[Tensor, Tensor, float]:  # fmt: skip
    """Returns test scores ``(Q, C)``, training scores ``(M, C)`` and the final epoch's mean training loss."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(x.shape[1])  # torch.nn.Linear's default initialisation, from our generator
    layer = torch.nn.utils.skip_init(torch.nn.Linear, x.shape[1], num_classes, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=generator))
    if settings["optimizer"] == "adam":
        optimizer = torch.optim.Adam(layer.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    else:
        optimizer = torch.optim.SGD(
            layer.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"], momentum=momentum
        )
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for _ in progress(range(settings["epochs"])):
        loss_sum.zero_()
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for index in order.split(settings["batch_size"]):
            loss = F.cross_entropy(layer(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * index.numel()
    with torch.no_grad():
        return layer(x_test), layer(x), (loss_sum / x.shape[0]).item()


def _train_logreg(
    x: Tensor, y: Tensor, x_test: Tensor, num_classes: int, C: float, max_iter: int
) -> tuple[Tensor, Tensor, dict]:
    """scikit-learn lbfgs logistic regression; scores ``(Q, C)`` and ``(M, C)`` over all ``num_classes``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x.double().cpu().numpy(), y.cpu().numpy())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)

    def scores(features: Tensor) -> Tensor:
        # classes absent from the training split can never be predicted: score -inf
        out = torch.full((features.shape[0], num_classes), -math.inf, dtype=torch.float64)
        decision = torch.from_numpy(model.predict_log_proba(features.double().cpu().numpy()))
        out[:, torch.from_numpy(model.classes_).long()] = decision
        return out

    info = {"C": float(C), "max_iter": int(max_iter), "n_iter": int(model.n_iter_.max()), "converged": converged}
    return scores(x_test), scores(x), info


def linear_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    num_classes: int | None = None,
    *,
    method: Literal["torch", "logreg"] = "torch",
    preset: str = "hcl",
    optimizer: Literal["adam", "sgd"] | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    momentum: float | None = None,
    standardize: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    C: float = 1.0,
    max_iter: int = 1000,
    progress: Progress = no_progress,
) -> dict:
    """Train a linear classifier on frozen training features and report its test accuracy.

    Args:
        train_features, train_labels: ``(M, F)`` features (no augmentation) and ``(M,)`` class ids.
        test_features, test_labels: ``(Q, F)`` and ``(Q,)``.
        num_classes: ``C``; default ``max label + 1`` over both splits.
        method: ``"torch"`` (a preset's optimiser) or ``"logreg"`` (scikit-learn lbfgs).
        preset: ``LINEAR_PRESETS`` name (``method="torch"`` only; ignored and recorded as ``None`` for logreg).
        optimizer, lr, weight_decay, epochs, batch_size: override the preset (``method="torch"`` only).
        momentum: SGD momentum (default 0.9, recorded; not part of the spec's table).
        standardize: standardise features with the training split's statistics (off by default).
        seed: seeds the initialisation and the batch order.
        device: where to train (``method="torch"``); default the features' device.
        C, max_iter: inverse L2 strength and iteration cap of ``method="logreg"``.
        progress: shows the epochs of ``method="torch"`` (:data:`mmcl.contract.Progress`; default none).

    Returns:
        ``{"top1", "top5" (C >= 5), "train_top1", "method", "preset", "mode", "standardize", "seed",
        "num_classes", "n_train", "n_test"}`` plus, for torch, ``"optimizer", "lr", "weight_decay", "epochs",
        "batch_size", "momentum" (SGD), "train_loss"`` (final epoch) and, for logreg, ``"C", "max_iter", "n_iter",
        "converged"``. Accuracies in percent at the final epoch; ties between classes go to the lower index.
    """
    x, x_test = as_feature_pair(train_features, "test_features", test_features)
    y = as_labels("train_labels", train_labels, x.shape[0])
    y_test = as_labels("test_labels", test_labels, x_test.shape[0])
    num_classes = infer_num_classes(num_classes, y, y_test)
    device = torch.device(device) if device is not None else x.device
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, x_test, y = x.to(device, dtype), x_test.to(device, dtype), y.to(device)
    if standardize:
        x, x_test = standardise(x, x_test)
    result: dict = {}
    if method == "torch":
        settings = _resolve(
            preset, optimizer=optimizer, lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size
        )
        momentum = SGD_MOMENTUM if momentum is None else float(momentum)
        test_scores, train_scores, loss = _train_torch(x, y, x_test, num_classes, settings, momentum, seed, progress)
        result.update(settings, preset=preset, train_loss=loss)
        if settings["optimizer"] == "sgd":
            result["momentum"] = momentum
    elif method == "logreg":
        torch_only = {
            "optimizer": optimizer,
            "lr": lr,
            "weight_decay": weight_decay,
            "epochs": epochs,
            "batch_size": batch_size,
            "momentum": momentum,
        }
        given = [k for k, v in torch_only.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to method='torch'; method='logreg' takes C and max_iter")
        if not C > 0 or max_iter < 1:
            raise ValueError(f"C must be > 0 and max_iter >= 1, got {C!r}, {max_iter!r}")
        test_scores, train_scores, info = _train_logreg(x, y, x_test, num_classes, C, max_iter)
        result.update(info, preset=None)
    else:
        raise ValueError(f"method must be 'torch' or 'logreg', got {method!r}")
    return {
        **topk_accuracies(test_scores, y_test),
        "train_top1": topk_accuracies(train_scores, y)["top1"],
        "method": method,
        **result,
        "mode": "offline, pre-computed features",
        "standardize": bool(standardize),
        "seed": seed,
        "num_classes": num_classes,
        "n_train": x.shape[0],
        "n_test": x_test.shape[0],
    }
