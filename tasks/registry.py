"""Registry of evaluation tasks that run on a frozen encoder, as named in a config's ``eval.tasks``.

A task is a function ``run(context, options) -> dict`` registered with an options dataclass, so that
``mmcl evaluate`` and the config loader can validate ``eval.<task>.<option>`` keys::

    @register_task("knn", KNNOptions, headline=("top1",))
    def knn(context: EvalContext, options: KNNOptions) -> dict: ...

The :class:`EvalContext` gives the frozen encoder, its adapter and cached embeddings of the adapter's
evaluation splits, so that tasks sharing a split embed it once.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader

from mmcl.contract import Encoder, ModalityAdapter, Progress, Registry, no_progress

T = TypeVar("T")


@dataclass
class EvalContext:
    """What a task sees: the frozen encoder (eval mode), its adapter, the device and the shared settings."""

    encoder: Encoder
    adapter: ModalityAdapter
    device: torch.device
    batch_size: int = 512
    seed: int = 0
    progress_bars: bool = False  # show the long loops' progress (on a terminal only: :meth:`progress`)
    task: str = ""  # the task now running, which names its bars
    #: Validation mode (tuning, checkpoint selection): the hold-out fraction of the training split that stands in
    #: for the test split (:meth:`~mmcl.contract.ModalityAdapter.validation_splits`); each task scores its own
    #: validation (:attr:`EvalTask.validation`). None: the evaluation proper.
    validation: float | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def progress(self, items: Iterable[T], what: str, total: int | None = None) -> Iterable[T]:
        """``items`` with a progress bar ``"<task>: <what>"`` on stderr while they pass, when :attr:`progress_bars`
        is on and stderr is a terminal (tqdm's rule); else the items as they are (a :data:`~mmcl.contract.Progress`
        with ``what`` bound: ``partial(context.progress, what="epochs")``)."""
        if not self.progress_bars:
            return items
        from tqdm.auto import tqdm

        label = f"{self.task}: {what}" if self.task else what
        return tqdm(items, desc=label, total=total, leave=False, disable=None, file=sys.stderr)

    @torch.no_grad()
    def embed(self, split: str) -> dict[str, torch.Tensor]:
        """``{"features" (n, f) backbone, "head" (n, d) projection, "labels" (n,)}`` of an evaluation split (in
        validation mode, of the validation split of that name)."""
        if split not in self._cache:
            splits = self._splits()
            if split not in splits:
                raise ValueError(
                    f"evaluation split {split!r} not provided by the {self.adapter.name!r} adapter; "
                    f"it has {sorted(splits)}"
                )
            self._cache[split] = embed_dataset(
                self.encoder, splits[split], self.adapter.collate_eval, self.batch_size, self.device,
                progress=partial(self.progress, what=f"embed split {split}"),
            )  # fmt: skip
        return self._cache[split]

    def _splits(self) -> dict:
        if self.validation is None:
            return self.adapter.eval_datasets()
        return self.adapter.validation_splits(self.validation, self.seed)


@torch.no_grad()
def embed_dataset(
    encoder: Encoder, dataset, collate, batch_size: int, device: torch.device, progress: Progress = no_progress
) -> dict[str, torch.Tensor]:
    """Backbone features, head embeddings and labels of a whole dataset, in order (encoder in eval mode); ``progress``
    shows the batches."""
    encoder.eval()
    features, heads, labels = [], [], []
    for inputs, targets in progress(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)):
        feature = encoder.features(inputs.to(device))
        features.append(feature.float().cpu())
        heads.append(encoder.head(feature).float().cpu())
        labels.append(targets.cpu())
    return {"features": torch.cat(features), "head": torch.cat(heads), "labels": torch.cat(labels)}


@dataclass(frozen=True)
class EvalTask:
    name: str
    options: type  # a dataclass: the task's ``eval.<name>`` keys and defaults
    run: Callable[[EvalContext, Any], dict]
    headline: tuple[str, ...]  # result keys printed in the summary table (dotted for nested dicts)
    primary: str | None = None  # the result key a comparison ranks encoders on (higher is better); None: none
    protocol: str = ""  # one line naming the protocol, formatted with the options (``{k}``)
    #: One line naming what the task scores in validation mode (``EvalContext.validation``), never the test split;
    #: "" when it has no validation score (then it cannot select checkpoints or tune).
    validation: str = ""

    def describe(self, options: Any) -> str:
        """The protocol with this evaluation's options, e.g. ``weighted kNN (k=200, T=0.1) ...``."""
        return self.protocol.format(**dataclasses.asdict(options)) if self.protocol else self.name

    def headline_values(self, result: dict) -> dict[str, float]:
        """The numbers of ``result`` at the :attr:`headline` keys (``{"top1": 93.1}``), those it has."""
        values = {}
        for key in self.headline:
            value: Any = result
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
        return values


TASKS: Registry[EvalTask] = Registry(
    "evaluation task",
    # Imported on first lookup: each may pull in heavy libraries.
    builtin=("mmcl.tasks.classification", "mmcl.tasks.graph_classification", "mmcl.tasks.sts", "mmcl.tasks.retrieval"),
    config_key="eval.tasks",
)


def register_task(
    name: str,
    options: type,
    headline: tuple[str, ...] = (),
    primary: str | None = None,
    protocol: str = "",
    validation: str = "",
) -> Callable:
    """Decorator registering ``run(context, options) -> dict`` as the evaluation task ``name``.

    ``options`` is a dataclass of the task's ``eval.<name>.<key>`` settings; ``headline`` names the result
    keys (dotted for nested dicts) that ``mmcl evaluate`` prints; ``primary`` the one that ``mmcl compare``
    ranks on (higher is better); ``protocol`` describes the protocol in one line, with ``{option}`` fields;
    ``validation`` what ``run`` scores when ``context.validation`` is set (tuning, checkpoint selection), "" for
    none.
    """
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"task {name!r}: options must be a dataclass")

    def decorate(run: Callable[[EvalContext, Any], dict]) -> Callable[[EvalContext, Any], dict]:
        TASKS.register(name)(EvalTask(name, options, run, headline, primary, protocol, validation))
        return run

    return decorate


def get_task(name: str) -> EvalTask:
    return TASKS.get(name)


def available_tasks() -> list[str]:
    return TASKS.names()
