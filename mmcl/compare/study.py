"""Study files: which losses, tasks and seeds a comparison runs, checked before any cell starts.

A study is a YAML file (or a packaged study's name, ``cpu-small``, as ``mmcl configs`` lists it) with the keys
:data:`STUDY_KEYS`; each task has :data:`TASK_KEYS`. ``mmcl compare --example`` prints a commented study with every
key (the packaged study ``example``)::

    name: cpu-small
    seeds: [0, 1, 2]
    baseline: nt_xent               # a loss label; paired differences are taken against it
    random_init: true               # an untrained-encoder row per task (evaluated, never trained)
    reference: random_init          # the score 0 of the normalised aggregates (default: random_init, if any)
    losses:
      - nt_xent                     # a registered loss with its defaults
      - {name: hcl, beta: 1.0, label: hcl-b1}
    tasks:
      - name: mutag
        config: graph/mutag         # a packaged config or a YAML file
        overrides: ["data.root=${DATA}/tu"]   # or a mapping {data.root: ...}
        metric: graph_classification.accuracy   # default: the first evaluation task's primary score
        loss_options:               # the task's own defaults for the losses that take them (a loss entry's win)
          "*": {temperature: 0.2}   # every loss with a temperature
          dystress: {tau_min: 0.1, tau_max: 0.3}
    claims: [...]                   # optional verdicts (mmcl.compare.claims), fixed before the study runs
    resources: {cpus: 2, gpus: 1}   # optional: what each cell asks of an executor (mmcl.compare.executor)
    executor: {name: slurm, partition: gpu, time: 120}   # optional: the executor and its options (--executor wins)

The budget is the task's: a loss entry holds loss options only, so it never changes steps, batch size or data.
Every (task, loss, seed) is a :class:`Cell` with a stable id and a definition hash over its resolved config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl import losses
from mmcl.compare.claims import check_claims
from mmcl.compare.definition import load_study_file
from mmcl.compare.executor import Resources, read_executor_section, read_resources
from mmcl.compare.records import CURVE_KEYS, NUMBER_FIELDS, RANDOM_INIT, REPRESENTATION_KEYS
from mmcl.compare.tune import Dimension, TuneSpec, read_tune
from mmcl.contract import Seed
from mmcl.contract.names import check_name
from mmcl.contract.options import check_type
from mmcl.engine.config import Config, apply_overrides, build_adapter, config_from_dict, read_config, validate_loss
from mmcl.runs.folder import flatten
from mmcl.tasks import get_task

#: Config keys that do not change what a cell computes: left out of its definition hash.
PLACEMENT_KEYS = (
    "train.threads",
    "train.progress_bar",
    "train.output_dir",
    "train.run_name",
    "train.num_workers",
    "train.auto_resume",
)
_VARIABLE = re.compile(r"\$\{(\w+)\}")
#: The keys of a study file and of each of its tasks (``mmcl compare --help`` lists them).
STUDY_KEYS = ("name", "description", "variables", "seeds", "losses", "tasks", "baseline", "random_init", "reference",
              "claims", "tune", "executor", "resources")  # fmt: skip
TASK_KEYS = ("name", "config", "overrides", "metric", "loss_options")


@dataclass(frozen=True)
class LossEntry:
    label: str
    section: dict  # {"name": ..., **options}
    tune: bool = True  # tuned when the study has a tune: section (false: run at these options, a baseline)


@dataclass(frozen=True)
class TaskEntry:
    name: str
    config: Config  # the task's config with its overrides, before a loss and a seed are set
    raw: dict  # the same as a dict (what cells are built from)
    metric: str  # dotted key of the evaluation result: "knn.top1"
    protocol: str  # one line naming the evaluation protocol
    loss_options: dict  # {"*" or a loss name: {option: value}}: the task's defaults for the losses
    evaluations: tuple[str, ...] = ()  # the evaluation tasks its cells run

    @property
    def claim_metrics(self) -> set[str]:
        """The keys of its records that a claim's metric may name (``diagnostics.*``: any final diagnostic)."""
        scores = {f"scores.{name}.{key}" for name in self.evaluations if name != "metrics"
                  for key in get_task(name).headline}  # fmt: skip
        return {*NUMBER_FIELDS, *scores, *(f"representation.{key}" for key in REPRESENTATION_KEYS), "diagnostics.*"}

    @property
    def curves(self) -> set[str]:
        """The keys its cells' training curves log: a bound claim compares two of them."""
        return {*CURVE_KEYS, *(f"monitor/{m['name']}" for m in self.config.train.monitor_losses)}

    def loss_section(self, entry: LossEntry) -> dict:
        """The entry's loss section on this task: the task's defaults that the loss takes, then the entry's."""
        name = entry.section["name"]
        valid = losses.options(name)
        shared = {k: v for k, v in (self.loss_options.get("*") or {}).items() if k in valid}
        return {"name": name, **shared, **(self.loss_options.get(name) or {}), **entry.section}

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def definition(self) -> str:
        """A hash of what every cell of the task computes whatever its loss and seed (its config, less the loss,
        the seeds and the placement keys): ``--dry-run`` matches finished cells of other studies by it."""
        skipped = {*PLACEMENT_KEYS, "train.seed", "eval.seed"}
        flat = {k: v for k, v in flatten(self.raw).items() if k not in skipped and not k.startswith("loss.")}
        return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def dataset(self) -> str:
        data = self.config.data
        return str(getattr(data, "dataset", None) or Path(str(getattr(data, "path", "") or "data")).stem)


@dataclass(frozen=True)
class Cell:
    """One run of a study: a task, a loss (or ``random_init``) and a seed."""

    task: str
    loss: str  # the loss label, or RANDOM_INIT
    seed: int
    raw: dict = field(repr=False)  # the resolved config sections
    tuned: dict | None = field(default=None, compare=False)  # a tuned loss's selection (mmcl.compare.search)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.loss}/seed{self.seed}"

    @property
    def definition(self) -> str:
        """A hash of what the cell computes (its config, less where it runs and how it reports; and under nested
        cross-validation, the options each outer fold trains at)."""
        flat = {key: value for key, value in flatten(self.raw).items() if key not in PLACEMENT_KEYS}
        if self.tuned and self.tuned.get("per_fold"):
            flat["tuned.per_fold"] = [fold["options"] for fold in self.tuned["per_fold"]]
        return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def shard(self, count: int) -> int:
        """The 1-based shard that runs this cell among ``count`` (stable: a hash of the cell's id)."""
        return int(hashlib.sha1(self.id.encode()).hexdigest(), 16) % count + 1


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    seeds: tuple[int, ...]
    losses: tuple[LossEntry, ...]
    tasks: tuple[TaskEntry, ...]
    baseline: str | None
    random_init: bool
    claims: tuple[dict, ...]
    reference: str | None  # the normalised aggregates' reference row
    source: dict = field(repr=False)  # the study as read, variables filled in (saved beside the records)
    tune: TuneSpec | None = None
    executor: dict | None = None  # the study's executor: section ({name, options}); the command line's wins
    resources: Resources = Resources()  # what each cell asks of the executor

    def cells(self, selections: dict[str, dict] | None = None) -> list[Cell]:
        """Every cell, tasks in order, then losses (the random-init row first), then seeds. A tuned study's cells
        run at ``selections`` (``{"task/label": {"options": {"loss.x" | "optim.y": value}, ...}}``, the search's);
        without them, a tuned loss has no cells yet."""
        entries = [None] * self.random_init + list(self.losses)
        out = []
        for task in self.tasks:
            for entry in entries:
                if (
                    entry is not None
                    and self.tuned(entry)
                    and (selections or {}).get(f"{task.name}/{entry.label}") is None
                ):
                    continue  # not selected yet: the search runs first
                selected = (selections or {}).get(f"{task.name}/{entry.label}") if entry is not None else None
                section = None if entry is None else task.loss_section(entry)
                label = RANDOM_INIT if entry is None else entry.label
                raw = self.validated(task, task.raw)
                out.extend(
                    Cell(task.name, label, seed, _cell_config(raw, section, seed, selected), selected)
                    for seed in self.seeds
                )
        return out

    def validated(self, task: TaskEntry, raw: dict) -> dict:
        """A tuned study validates every run of a task with ``train.validate_every`` on the task's own metric, as
        its trials (checkpoint selection and pruning on the same validation data): ``raw`` with that set."""
        if self.tune is None or not task.config.train.validate_every:
            return raw
        raw = json.loads(json.dumps(raw))
        raw.setdefault("eval", {}).update(validation_metric=task.metric,
                                          validation_fraction=self.tune.validation_fraction)  # fmt: skip
        return raw

    def tuned(self, entry: LossEntry) -> bool:
        """Whether ``entry``'s options are searched: the study tunes, the entry does not opt out, and its space is
        not empty (a loss with nothing to tune, CLIP's learned temperature, runs at its options)."""
        return self.tune is not None and entry.tune and bool(self.tune.space(entry.section["name"], entry.label))

    def task(self, name: str) -> TaskEntry:
        return next(task for task in self.tasks if task.name == name)


def _cell_config(task: dict, loss: dict | None, seed: int, selected: dict | None = None) -> dict:
    raw = json.loads(json.dumps(task))  # a deep copy
    if loss is not None:
        raw["loss"] = dict(loss)
    raw = with_options(raw, (selected or {}).get("options") or {})
    raw.setdefault("train", {})["seed"] = seed
    raw.setdefault("eval", {})["seed"] = seed
    return raw


def with_options(raw: dict, options: dict) -> dict:
    """A copy of the config sections ``raw`` with a search's options set (``{"loss.temperature": 0.1, ...}``)."""
    raw = json.loads(json.dumps(raw))
    for key, value in options.items():
        section, option = key.split(".", 1)
        raw.setdefault(section, {})[option] = value
    return raw


# ---------------------------------------------------------------- reading a study


def read_study(source: str | Path | dict, variables: dict[str, str] | None = None) -> Study:
    """Read and check a study: a YAML file, a packaged study name (``studies/cpu-small`` or ``cpu-small``) or a
    mapping. ``variables`` fill ``${NAME}`` in the study (default: the environment)."""
    raw = _load(source)
    if not isinstance(raw, dict):
        raise ValueError(f"a study must be a mapping with name, seeds, losses and tasks; got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the study; valid: {', '.join(STUDY_KEYS)}")
    raw = _fill_variables(raw, raw.get("variables") or {}, variables)
    for key in ("name", "seeds", "losses", "tasks"):
        if not raw.get(key):
            raise ValueError(f"the study needs {key!r}")
    seeds = _seeds(raw["seeds"])
    loss_entries = tuple(_loss_entry(entry, i) for i, entry in enumerate(raw["losses"]))
    _check_unique("loss label", [loss.label for loss in loss_entries] + [RANDOM_INIT])
    tasks = tuple(_task_entry(entry, i) for i, entry in enumerate(raw["tasks"]))
    _check_unique("task name", [task.name for task in tasks])
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in {loss.label for loss in loss_entries}:
        raise ValueError(
            f"baseline={baseline!r} is not one of the study's loss labels {[l.label for l in loss_entries]}"
        )
    for task in tasks:
        for loss in loss_entries:
            validate_loss(task.loss_section(loss), f"the loss {loss.label!r} on task {task.name!r}")
            _check_feeds(task, loss)
    labels = [loss.label for loss in loss_entries]
    reference = _reference(raw, labels)
    metrics, curves = {task.name: task.claim_metrics for task in tasks}, {task.name: task.curves for task in tasks}
    check_claims(list(raw.get("claims") or []), labels, [task.name for task in tasks], metrics, curves)
    tune = read_tune(raw.get("tune"), list(loss_entries), list(tasks))
    for task in tasks:
        if tune is None:
            _check_validation(task)
        for loss in loss_entries if tune is not None else ():
            if loss.tune:  # an untuned entry runs at its options
                _check_space_values(tune, task, loss)
    return Study(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        seeds=seeds,
        losses=loss_entries,
        tasks=tasks,
        baseline=baseline,
        random_init=bool(raw.get("random_init", False)),
        claims=tuple(raw.get("claims") or ()),
        reference=reference,
        source=raw,
        tune=tune,
        executor=read_executor_section(raw.get("executor")),
        resources=read_resources(raw.get("resources")),
    )


def _load(source: str | Path | dict) -> Any:
    return source if isinstance(source, dict) else load_study_file(source)


def _reference(raw: dict, labels: list[str]) -> str | None:
    """The normalised aggregates' reference row: the study's ``reference``, else random_init where it runs."""
    reference = raw.get("reference", RANDOM_INIT if raw.get("random_init") else None)
    valid = labels + [RANDOM_INIT] * bool(raw.get("random_init"))
    if reference is not None and reference not in valid:
        raise ValueError(f"reference={reference!r} is not a row of the study: use one of {valid} (random_init needs "
                         "random_init: true)")  # fmt: skip
    return reference


def _fill_variables(raw: dict, declared: dict, given: dict[str, str] | None) -> dict:
    """``${NAME}`` in every string of the study, from ``given`` (``--var``), else the environment."""
    values = {**os.environ, **(given or {})}
    used = set(_VARIABLE.findall(json.dumps(raw)))
    missing = sorted(name for name in used if name not in values)
    if missing:
        hints = "; ".join(f"{name}: {declared.get(name, 'no description')}" for name in missing)
        raise ValueError(
            f"the study needs the variable(s) {missing} ({hints}); set them with --var NAME=VALUE or in the environment"
        )

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return _VARIABLE.sub(lambda m: values[m.group(1)], value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return {key: (value if key == "variables" else fill(value)) for key, value in raw.items()}


def _seeds(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"seeds must be a non-empty list of integers, got {value!r}")
    seeds = tuple(check_type(f"seeds[{i}]", seed, Seed) for i, seed in enumerate(value))  # train.seed's range
    _check_unique("seed", list(seeds))
    return seeds


def _loss_entry(entry: Any, index: int) -> LossEntry:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"losses[{index}] must be a loss name or a mapping with 'name' and options, got {entry!r}")
    entry = dict(entry)
    label = check_name(str(entry.pop("label", entry["name"])), f"the study's losses[{index}] label", nested=False)
    tune = entry.pop("tune", True)
    if not isinstance(tune, bool):
        raise ValueError(f"losses[{index}].tune={tune!r} must be true or false (false: not tuned, run as given)")
    section = validate_loss(entry, f"the study's losses[{index}] ({label})")
    return LossEntry(label, section, tune)


def _task_entry(entry: Any, index: int) -> TaskEntry:
    if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
        raise ValueError(f"tasks[{index}] must be a mapping with 'name' and 'config' (and optional overrides, metric)")
    check_name(str(entry["name"]), f"tasks[{index}].name", nested=False)
    unknown = sorted(set(entry) - set(TASK_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in tasks[{index}] ({entry['name']}); valid: {', '.join(TASK_KEYS)}")
    overrides = entry.get("overrides") or []
    if isinstance(overrides, dict):
        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    raw, _ = read_config(entry["config"])
    try:
        raw = apply_overrides(raw, [str(o) for o in overrides])
        config = config_from_dict(raw)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"task {entry['name']!r}: {error}") from None
    names = tuple(config.eval.tasks or build_adapter(config).default_eval_tasks)
    metric, protocol = _metric(entry.get("metric"), config, entry["name"], names)
    loss_options = entry.get("loss_options") or {}
    if not isinstance(loss_options, dict) or not all(isinstance(v, dict) for v in loss_options.values()):
        raise ValueError(f"tasks[{index}].loss_options must map '*' or loss names to option mappings")
    return TaskEntry(str(entry["name"]), config, config.to_dict(), metric, protocol, loss_options, names)


def _metric(metric: str | None, config: Config, task: str, names: tuple[str, ...]) -> tuple[str, str]:
    """The cell's primary score (``eval_task.key``) and the protocol that produces it."""
    if metric is None:
        primary = [name for name in names if get_task(name).primary]
        if not primary:
            raise ValueError(f"task {task!r}: none of its evaluation tasks {names} has a primary score; set metric")
        metric = f"{primary[0]}.{get_task(primary[0]).primary}"
    evaluation = metric.split(".")[0]
    if evaluation not in names:
        raise ValueError(f"task {task!r}: metric {metric!r} names the evaluation task {evaluation!r}, which the "
                         f"task does not run (its eval.tasks: {list(names)})")  # fmt: skip
    spec = get_task(evaluation)
    return metric, spec.describe(config.eval.options.get(evaluation) or spec.options())


def _check_unique(what: str, values: list) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"duplicated {what}(s) {repeated} in the study; give each its own (a loss entry's 'label')")


def _check_feeds(task: TaskEntry, loss: LossEntry) -> None:
    """Refuse a loss that the task's data cannot feed (labels), and the supervised-on-evaluated-items leak."""
    info = losses.info(loss.section["name"])
    needs_labels = "labels" in info.inputs and "optional" not in info.inputs
    adapter = build_adapter(task.config)
    try:
        has_labels = adapter.has_labels
    except (OSError, ValueError):  # data not reachable here (a GPU study's --dry-run): the run will tell
        return
    if needs_labels and not has_labels:
        raise ValueError(f"loss {loss.label!r} ({info.name}) needs class labels, and task {task.name!r} "
                         f"({task.modality}, {task.dataset}) provides none")  # fmt: skip
    uses_labels = "labels" in info.inputs and has_labels
    if uses_labels and adapter.evaluates_pretraining_items and not task.config.train.allow_label_leak:
        raise ValueError(f"loss {loss.label!r} reads the class labels that task {task.name!r}'s evaluation scores "
                         "(the items are pretrained on and evaluated); use an unsupervised loss there, or set "
                         "train.allow_label_leak=true in the task's overrides knowingly")  # fmt: skip


def _check_space_values(tune: TuneSpec, task: TaskEntry, loss: LossEntry) -> None:
    """Every corner of the searched box (each range at its low or high end, each choice) builds the loss: a
    temperature range that reaches 0, or DySTreSS's tau_min above its tau_max, fails here, before any trial, so
    that a failed trial means a diverging run, not a point the loss refuses (which would cost that loss budget)."""
    space = {key.split(".", 1)[1]: dim for key, dim in tune.space(loss.section["name"], loss.label).items()
             if key.startswith("loss.")}  # fmt: skip
    ends = [dim.choices if dim.kind == "choice" else _range_ends(dim) for dim in space.values()]
    for corner in itertools.product(*ends):
        options = dict(zip(space, corner))
        at = ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value!r}"
                       for name, value in options.items())  # fmt: skip
        with warnings.catch_warnings():  # a loss's advice on its options (DySTreSS's) is not a refusal
            warnings.simplefilter("ignore")
            validate_loss({**task.loss_section(loss), **options},
                          f"tune: the loss {loss.label!r} at {at} (a corner of its search space; narrow the ranges "
                          "so that every point is valid)")  # fmt: skip


def _range_ends(dim: Dimension) -> tuple:
    return (int(dim.low), int(dim.high)) if dim.kind == "int" else (dim.low, dim.high)


def _check_validation(task: TaskEntry) -> None:
    """``train.validate_every`` needs something to validate on (a tuned study validates on the task's metric)."""
    config = task.config
    if config.train.validate_every and build_adapter(config).validation is None and not config.eval.validation_metric:
        raise ValueError(
            f"task {task.name!r}: train.validate_every needs a validation, and the {config.modality} modality has none "
            f"of its own; add eval.validation_metric={task.metric} to its overrides"
        )
