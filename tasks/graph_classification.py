r"""Graph classification on frozen embeddings: GraphCL's unsupervised TU protocol (evaluation spec, section 4).

Reference: GraphCL (You et al. 2020, arXiv:2010.13902), ``unsupervised_TU/evaluate_embedding.py``
(``svc_classify``, inherited from InfoGraph). The protocol:

1. embed the **whole dataset** with the frozen encoder (backbone output, no projection head, no
   normalisation; GraphCL: the 96-d concatenation of every GIN layer's sum-pooled output);
2. outer loop: ``StratifiedKFold(n_splits=10, shuffle=True)``. The reference leaves it unseeded; here
   each split seed (default: the evaluation seed) gives one seeded split, recorded with the result;
3. in each fold, ``GridSearchCV(SVC(), {"C": [1e-3, ..., 1e3]}, cv=5, scoring="accuracy")`` (scikit-learn's
   defaults: RBF kernel, ``gamma="scale"``; inner folds stratified, unshuffled), refit on the training
   folds, accuracy on the held-out fold;
4. a run's accuracy is the mean over the 10 folds; over several split seeds, the mean of those means.

The result holds the accuracy in percent, its standard deviation over folds (mean over split seeds) and
over split seeds, per-seed fold accuracies and chosen ``C``; standard deviations are population ones
(``ddof=0``, numpy's default, as GraphCL's aggregation presumably used). The standard deviation GraphCL
publishes is over 5 *pretraining* seeds; that is a study's job (``mmcl compare graphcl-tu``), since
one evaluation sees one encoder.

``method="logreg"`` swaps the SVC for scikit-learn's ``LogisticRegression`` (lbfgs, same grid over ``C``);
``search=False`` uses GraphCL's fixed ``SVC(C=10)`` (and ``C=1`` for logreg). ``mmcl evaluate`` only
ever scores the final checkpoint: no epoch is selected on test accuracy.

Example:
    >>> import torch
    >>> from mmcl.tasks.graph_classification import cross_validated_accuracy
    >>> x = torch.cat([torch.randn(40, 8) + 3, torch.randn(40, 8) - 3])
    >>> y = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    >>> cross_validated_accuracy(x, y, folds=4, inner_folds=3)["accuracy"]
    100.0
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Literal

import numpy as np
import sklearn
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from mmcl.contract import PositiveFloat, Progress, Range, no_progress
from mmcl.tasks._common import ArrayLike, as_features, as_labels
from mmcl.tasks.registry import EvalContext, register_task

#: GraphCL's grid: ``C in {1e-3, 1e-2, 1e-1, 1, 10, 100, 1000}``.
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class GraphClassificationOptions:
    method: Literal["svc", "logreg"] = "svc"
    folds: Annotated[int, Range(ge=2)] = 10
    inner_folds: Annotated[int, Range(ge=2)] = 5
    search: bool = True  # inner grid search over C; False: GraphCL's fixed SVC(C=10) / logreg C=1
    C: list[PositiveFloat] = field(default_factory=lambda: list(C_GRID))
    gamma: Literal["scale", "auto"] = "scale"  # SVC kernel width; "auto" = scikit-learn < 0.22 default
    split_seeds: list[int] | None = None  # outer-split seeds; None: the evaluation seed
    layer: Literal["backbone", "head"] = "backbone"
    standardize: bool = False  # per-feature scaling fitted inside each training fold (GraphCL: none)
    n_jobs: int | None = None  # processes over the outer folds; None: torch's thread count (every core by default)


def _classifier(method: str, search: bool, grid: Sequence[float], inner_folds: int, gamma: str, standardize: bool):
    if method == "svc":
        model, key, fixed = SVC(gamma=gamma), "C", 10.0
    elif method == "logreg":
        model, key, fixed = LogisticRegression(max_iter=2000), "C", 1.0
    else:
        raise ValueError(f"method must be 'svc' or 'logreg', got {method!r}")
    if standardize:
        model, key = make_pipeline(StandardScaler(), model), f"{type(model).__name__.lower()}__C"
    if not search:
        model.set_params(**{key: fixed})
        return model, key
    inner = StratifiedKFold(n_splits=inner_folds)  # GridSearchCV's cv=5 for a classifier: stratified, no shuffle
    return GridSearchCV(model, {key: list(grid)}, cv=inner, scoring="accuracy"), key


def _fold(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, method: str, search: bool,
          grid: Sequence[float], inner_folds: int, gamma: str,
          standardize: bool) -> tuple[float, float, float]:  # fmt: skip
    """One outer fold: fit (with the inner grid search) on ``train``; the accuracy on ``test``, the chosen C, and the
    inner cross-validated accuracy on ``train`` alone (the fold's validation score: its test labels unread)."""
    classifier, key = _classifier(method, search, grid, inner_folds, gamma, standardize)
    # One BLAS thread: these problems are tiny, and threaded BLAS on a busy machine makes lbfgs ~100x slower.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # lbfgs on unscaled features
        classifier.fit(x[train], y[train])
        if search:
            inner = float(classifier.best_score_)
        else:  # the fixed C's own inner cross-validation, as the grid search would have scored it
            folds = StratifiedKFold(n_splits=inner_folds)
            inner = float(cross_val_score(classifier, x[train], y[train], cv=folds, scoring="accuracy").mean())
    accuracy = float((classifier.predict(x[test]) == y[test]).mean())
    chosen = float(classifier.best_params_[key]) if search else float(classifier.get_params()[key])
    return accuracy, chosen, inner


def cross_validated_accuracy(
    x: ArrayLike,
    y: ArrayLike,
    *,
    method: Literal["svc", "logreg"] = "svc",
    folds: int = 10,
    inner_folds: int = 5,
    search: bool = True,
    C: Sequence[float] = C_GRID,
    gamma: Literal["scale", "auto"] = "scale",
    seeds: Sequence[int] = (0,),
    standardize: bool = False,
    n_jobs: int | None = None,
    progress: Progress = no_progress,
) -> dict:
    """GraphCL's stratified k-fold accuracy (percent) of ``x`` ``(N, F)`` with labels ``y`` ``(N,)``.

    Labels are re-encoded to ``0..C-1``; every class needs at least ``folds`` members. The outer folds run in
    ``n_jobs`` processes (joblib; None: torch's thread count, every core by default); each fold is fitted with one
    thread, so the result equals the serial one exactly. ``progress`` shows the folds as they finish.
    """
    x = as_features("x", x, min_rows=2).double().numpy()
    y = as_labels("y", y, x.shape[0]).numpy()
    y = np.unique(y, return_inverse=True)[1]  # GraphCL's LabelEncoder
    for name, value, low in (("folds", folds, 2), ("inner_folds", inner_folds, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    counts = np.bincount(y)
    if len(counts) < 2:
        raise ValueError("graph classification needs at least two classes")
    if counts.min() < folds:
        raise ValueError(f"the smallest class has {counts.min()} graphs, fewer than folds={folds}")
    if search and (not C or any(c <= 0 for c in C)):
        raise ValueError(f"C must be a non-empty list of positive numbers, got {list(C)!r}")
    if not seeds:
        raise ValueError("seeds must name at least one outer-split seed")

    outer = {int(seed): StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed)) for seed in seeds}
    splits = [(seed, train, test) for seed, split in outer.items() for train, test in split.split(x, y)]
    settings = (method, search, C, inner_folds, gamma, standardize)
    workers = n_jobs if n_jobs is not None else torch.get_num_threads()
    folds_fitted = Parallel(n_jobs=min(workers, len(splits)), return_as="generator")(
        delayed(_fold)(x, y, train, test, *settings) for _, train, test in splits
    )
    fitted = list(progress(folds_fitted, total=len(splits)))
    per_seed = []
    for seed in seeds:
        mine = [fold for (s, _, _), fold in zip(splits, fitted) if s == int(seed)]
        accuracies = [a for a, _, _ in mine]
        per_seed.append({
            "seed": int(seed),
            "accuracy": 100.0 * float(np.mean(accuracies)),
            "std_over_folds": 100.0 * float(np.std(accuracies)),
            "fold_accuracies": [100.0 * a for a in accuracies],
            "fold_validation": [100.0 * v for _, _, v in mine],  # inner CV on each fold's training part
            "C": [c for _, c, _ in mine],
        })  # fmt: skip
    means = [run["accuracy"] for run in per_seed]
    return {
        "accuracy": float(np.mean(means)),
        "validation": float(np.mean([np.mean(run["fold_validation"]) for run in per_seed])),
        "std_over_folds": float(np.mean([run["std_over_folds"] for run in per_seed])),
        "std_over_seeds": float(np.std(means)) if len(means) > 1 else None,
        "per_seed": per_seed,
        "method": method,
        "folds": folds,
        "inner_folds": inner_folds if search else None,
        "search": search,
        "C_grid": [float(c) for c in C] if search else None,
        "gamma": gamma if method == "svc" else None,
        "standardize": standardize,
        "std_ddof": 0,
        "n": int(x.shape[0]),
        "num_classes": int(len(counts)),
        "sklearn_version": sklearn.__version__,
    }


@register_task(
    "graph_classification",
    GraphClassificationOptions,
    headline=("accuracy", "std_over_folds"),
    primary="accuracy",
    protocol="accuracy (%) of {method} (grid search over C: {search}) in {folds}-fold cross-validation (GraphCL)",
    validation="the inner cross-validated accuracy on each outer fold's training part (nested cross-validation: "
    "no outer test fold's labels are read), averaged over the folds",
)
def graph_classification(context: EvalContext, options: GraphClassificationOptions) -> dict:
    """GraphCL's protocol on the adapter's ``"all"`` split (every graph, un-augmented)."""
    split = context.embed("all")
    x = split["features" if options.layer == "backbone" else "head"]
    seeds = options.split_seeds if options.split_seeds is not None else [context.seed]
    result = cross_validated_accuracy(
        x, split["labels"], method=options.method, folds=options.folds, inner_folds=options.inner_folds,
        search=options.search, C=options.C, gamma=options.gamma, seeds=seeds, standardize=options.standardize,
        n_jobs=options.n_jobs, progress=partial(context.progress, what="cross-validation folds"),
    )  # fmt: skip
    if context.validation is not None:  # the validation score ranks; the outer folds' accuracies stay per fold
        result = {**result, "accuracy": result["validation"], "validation_mode": True}
    return {**result, "layer": options.layer, "embedding_dim": int(x.shape[1])}
