"""A study's ``tune:`` section: the same search budget for every loss, options chosen on validation data only.

After Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV 2020; powerful-benchmarker): every loss
gets the same number of trials of the same search engine, selection reads validation scores only, and the test
split is read once, by the final cells at the selected options. Optuna is the search engine (samplers, pruners,
and a journal file that several processes share)::

    tune:
      trials: 20            # per (task, loss): every loss gets the same budget
      sampler: tpe          # tpe | gp | random | grid (Optuna's), seeded by `seed`
      seed: 0               # also the training seed of every trial
      pruner: median        # none | median | hyperband, on the validation scores of train.validate_every
      validation_fraction: 0.1   # the hold-out of the training split where a task needs one (kNN, linear probe)
      space:                # per loss name or label, "*" for every loss that takes the option
        "*": {temperature: {log: [0.02, 1.0]}}
        dystress: {tau_min: {log: [0.02, 0.1]}, tau_max: {log: [0.1, 1.0]}}
        hcl: {beta: [0.0, 2.0]}
      optim:                # shared optimiser keys, the same range for every loss
        lr: {log: [1.0e-4, 1.0e-2]}

A dimension is ``[low, high]`` (uniform), ``{log: [low, high]}`` (log-uniform), ``{int: [low, high]}`` or
``{choice: [...]}``. Each loss starts from its registry's default space (``mmcl losses NAME``); ``"*"``, its name's
and its label's entries override it, in that order. A loss entry with ``tune: false`` is not tuned (it runs at
its options: "tuned vs. defaults" side by side). The search itself runs in :mod:`mmcl.compare.search`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mmcl import losses
from mmcl.contract import Seed
from mmcl.contract.options import check_type

SAMPLERS = ("tpe", "gp", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
KEYS = ("trials", "sampler", "seed", "pruner", "validation_fraction", "space", "optim")
KINDS = ("float", "log", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched option: ``kind`` float (uniform), log (log-uniform), int, or choice."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def distribution(self) -> Any:
        """Optuna's distribution of the dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(self.low, self.high, log=self.kind == "log")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        return (
            f"{self.kind} [{self.low:g}, {self.high:g}]" if self.kind != "float" else f"[{self.low:g}, {self.high:g}]"
        )


def parse_dimension(value: Any, key: str) -> Dimension:
    """A dimension from its study form, or a ``ValueError`` naming ``key``, the value and the fix."""
    kind, bounds = ("float", value) if isinstance(value, list) else _kind_and_bounds(value, key)
    if kind == "choice":
        if not isinstance(bounds, list) or not bounds:
            raise ValueError(f"{key}: choice needs a non-empty list of values, got {bounds!r}")
        return Dimension("choice", choices=tuple(bounds))
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
        raise ValueError(f"{key}={value!r} must give two numbers [low, high], e.g. {{log: [0.02, 1.0]}}")
    low, high = (float(b) for b in bounds)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"{key}={value!r} is an empty or inverted range: low must be below high")
    if kind == "log" and low <= 0:
        raise ValueError(f"{key}={value!r}: a log range must lie above 0 (it touches {low:g}); start it at, e.g., 1e-3")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ValueError(f"{key}={value!r}: an int range needs integer bounds")
    return Dimension(kind, low, high)


def _kind_and_bounds(value: Any, key: str) -> tuple[str, Any]:
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in KINDS[1:]:
        raise ValueError(
            f"{key}={value!r} must be [low, high], {{log: [low, high]}}, {{int: [low, high]}} or {{choice: [...]}}"
        )
    return next(iter(value.items()))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TuneSpec:
    """A study's ``tune:`` section, checked."""

    trials: int
    sampler: str
    seed: int
    pruner: str
    validation_fraction: float
    spaces: dict  # "*", a loss name or a label -> {option: Dimension}
    optim: dict  # optimiser key -> Dimension

    def space(self, name: str, label: str) -> dict[str, Dimension]:
        """The search space of the loss ``name`` entered as ``label``: ``{"loss.<option>" | "optim.<key>": dim}``."""
        takes = losses.options(name)
        merged = {option: parse_dimension(v, f"{name}'s search_space.{option}")
                  for option, v in losses.info(name).search_space.items()}  # fmt: skip
        merged.update({option: dim for option, dim in self.spaces.get("*", {}).items() if option in takes})
        for key in dict.fromkeys([name, label]):
            merged.update(self.spaces.get(key, {}))
        return {**{f"loss.{k}": v for k, v in merged.items()}, **{f"optim.{k}": v for k, v in self.optim.items()}}

    def sampler_for(self, space: dict[str, Dimension]) -> Any:
        """Optuna's sampler, seeded; TPE starts from random trials for a third of the budget (at most its 10)."""
        import optuna

        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(10, max(1, self.trials // 3)))
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=min(10, max(1, self.trials // 3)))
        if self.sampler == "grid":
            return optuna.samplers.GridSampler({k: list(d.choices) for k, d in space.items()}, seed=self.seed)
        return optuna.samplers.RandomSampler(seed=self.seed)


def build_pruner(name: str, validate_every: int | None, max_steps: int | None) -> Any:
    """Optuna's pruner on the validation scores reported every ``validate_every`` steps."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=validate_every or 1, max_resource=max_steps or "auto")
    return optuna.pruners.NopPruner()


def read_tune(raw: Any, loss_entries: list, tasks: list) -> TuneSpec | None:
    """The study's ``tune:`` section checked against its losses and tasks, before any trial runs."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"tune must be a mapping with {list(KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in tune; valid: {list(KEYS)}")
    trials = raw.get("trials", 20)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"tune.trials={trials!r} must be an integer >= 1 (the trials every loss gets on each task)")
    sampler, pruner = raw.get("sampler", "tpe"), raw.get("pruner", "none")
    if sampler not in SAMPLERS:
        raise ValueError(f"tune.sampler={sampler!r} is not one of {list(SAMPLERS)} (Optuna's samplers)")
    if pruner not in PRUNERS:
        raise ValueError(f"tune.pruner={pruner!r} is not one of {list(PRUNERS)} (Optuna's pruners)")
    fraction = raw.get("validation_fraction", 0.1)
    if not _is_number(fraction) or not 0 < fraction < 1:
        raise ValueError(f"tune.validation_fraction={fraction!r} must be a number in (0, 1)")
    spec = TuneSpec(
        trials=trials, sampler=sampler, seed=check_type("tune.seed", raw.get("seed", 0), Seed), pruner=pruner,
        validation_fraction=float(fraction), spaces=_loss_spaces(raw.get("space") or {}, loss_entries),
        optim=_optim_space(raw.get("optim") or {}),
    )  # fmt: skip
    _check_against_tasks(spec, loss_entries, tasks)
    return spec


def _loss_spaces(raw: Any, loss_entries: list) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"tune.space must map '*', loss names or labels to {{option: range}}, got {raw!r}")
    names = {entry.section["name"]: entry for entry in loss_entries}
    labels = {entry.label: entry for entry in loss_entries}
    spaces = {}
    for key, options in raw.items():
        if not isinstance(options, dict):
            raise ValueError(f"tune.space.{key} must map options to ranges, got {options!r}")
        if key != "*" and key not in names and key not in labels:
            raise ValueError(f"tune.space.{key}: no loss of the study is named or labelled {key!r}; they are "
                             f"{sorted(set(names) | set(labels))}")  # fmt: skip
        takers = list(loss_entries) if key == "*" else [labels.get(key) or names[key]]
        for option in options:
            if not any(option in losses.options(entry.section["name"]) for entry in takers):
                valid = sorted(losses.options(takers[0].section["name"])) if key != "*" else "(none takes it)"
                raise ValueError(f"tune.space.{key}.{option}: the loss does not take {option!r}; its options: {valid}")
        spaces[key] = {option: parse_dimension(v, f"tune.space.{key}.{option}") for option, v in options.items()}
    return spaces


def _optim_space(raw: Any) -> dict:
    from mmcl.engine.config import OptimConfig

    if not isinstance(raw, dict):
        raise ValueError(f"tune.optim must map optimiser keys to ranges, got {raw!r}")
    numeric = {f.name for f in dataclasses.fields(OptimConfig) if f.name not in ("name", "schedule", "betas")}
    for key in raw:
        if key not in numeric:
            raise ValueError(f"tune.optim.{key} is not a numeric optimiser key; tunable: {sorted(numeric)}")
    return {key: parse_dimension(value, f"tune.optim.{key}") for key, value in raw.items()}


def _check_against_tasks(spec: TuneSpec, loss_entries: list, tasks: list) -> None:
    """Each task validates (its metric's task has a validation score), the pruner has scores to read, and the
    grid sampler has a grid."""
    from mmcl.tasks import get_task

    for task in tasks:
        evaluation = get_task(task.metric.split(".")[0])
        if not evaluation.validation:
            raise ValueError(f"tune: task {task.name!r} is scored by {task.metric}, whose protocol has no validation "
                             "score (it would read the test split); tune on another task, or drop tune")  # fmt: skip
    if spec.pruner != "none" and not any(task.config.train.validate_every for task in tasks):
        raise ValueError(f"tune.pruner={spec.pruner} reads validation scores during training, and no task sets "
                         "train.validate_every; add it to the overrides of the tasks to prune (the others run every "
                         "trial to its end), or set tune.pruner=none")  # fmt: skip
    for entry in loss_entries:
        space = spec.space(entry.section["name"], entry.label)
        if spec.sampler == "grid":
            continuous = [key for key, dim in space.items() if dim.kind != "choice"]
            if continuous:
                raise ValueError(f"tune.sampler=grid needs {{choice: [...]}} for every option; {entry.label}'s "
                                 f"{continuous} are ranges")  # fmt: skip
