"""Run configuration: YAML files with dotted command-line overrides, validated on load.

A config has the sections ``modality``, ``model``, ``data`` (validated by the modality adapter's
``ModelConfig``/``DataConfig``), ``loss`` (``name`` plus that loss's options), ``optim``, ``train`` and
``eval``. Files are read with ``yaml.safe_load`` (with YAML 1.2's numbers: ``3e-4`` is a float) and can only
name registered components (losses, modalities, backbones, tasks), never an import path::

    mmcl pretrain quickstart loss.name=dhel loss.temperature=0.3 train.epochs=5

Every key is checked on load: unknown keys (with the valid ones), types, the ranges that the sections'
type hints declare (:mod:`mmcl.contract.options`), registered names and options that cannot take effect.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml

from mmcl import losses
from mmcl.contract import (
    Fraction,
    ModalityAdapter,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
)
from mmcl.contract.names import check_name
from mmcl.contract.options import build_dataclass, short_number
from mmcl.engine.configs import packaged_config, read_text
from mmcl.modalities import modality_class
from mmcl.tasks import available_tasks, get_task

log = logging.getLogger("mmcl")


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "lars", "adam"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-6
    momentum: Annotated[float, Range(ge=0, lt=1)] = 0.9
    betas: list[Annotated[float, Range(ge=0, lt=1)]] = field(default_factory=lambda: [0.9, 0.999])
    # The warm-up, linear from 0 to optim.lr: a number of steps (shorter than the run), or a fraction of the run's
    # steps, rounded up as Hugging Face's Trainer does (follows train.max_steps and train.epochs); one of them or none.
    warmup_steps: NonNegativeInt | None = None
    warmup_ratio: Annotated[float, Range(ge=0, lt=1)] | None = None
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: Fraction = 0.0
    lars_trust_coefficient: PositiveFloat = 0.001
    exclude_bias_and_norm: bool = True  # from weight decay and the LARS adaptation

    def warmup_for(self, total_steps: int) -> int:
        """The warm-up steps of a run of ``total_steps``: ``warmup_steps``, else ``ceil(warmup_ratio * total_steps)``
        (rounded to 1e-9 first, so that 0.07 of 100 steps is 7, not 8), else 0."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_ratio is None:
            return 0
        return math.ceil(round(self.warmup_ratio * total_steps, 9))


@dataclass
class TrainConfig:
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None  # stop after this many optimiser steps (overrides epochs)
    batch_size: Annotated[int, Range(ge=2)] = 256  # per process; the loss sees world_size * batch_size pairs
    seed: Seed = 0
    shuffle: Literal["every_epoch", "once"] = "every_epoch"  # once: the same batch order every epoch (GraphCL TU)
    drop_last: bool = True  # false: an epoch ends with the smaller remaining batch (one process only; GraphCL TU)
    precision: Literal["no", "fp16", "bf16"] = "no"  # fp16 needs a GPU
    grad_clip: PositiveFloat | None = None
    grad_accumulation: PositiveInt = 1  # accumulates gradients; does NOT add negatives to the loss
    grad_cache_chunk: PositiveInt | None = None  # GradCache: encode the batch in chunks of this many rows
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt | None = None  # steps; a checkpoint is always written at the end
    validate_every: PositiveInt | None = None  # steps; keep checkpoints/best.pt by the adapter's validation
    keep_checkpoints: PositiveInt = 2
    num_workers: NonNegativeInt = 0
    threads: PositiveInt | None = None  # torch's intra-op threads (None: torch's default); recorded in run.json
    output_dir: str = "runs"
    run_name: str | None = None
    auto_resume: bool = False  # continue the run folder holding a checkpoint of the same config, else start anew
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a non-finite loss or gradient: stop the run, or skip the step
    allow_label_leak: bool = False  # a supervised loss on data whose evaluation scores the same items
    monitor_losses: list[Any] = field(default_factory=list)  # other losses logged without gradient: names or {name,...}
    cpu: bool = False
    progress_bar: bool = True
    # Accelerate's experiment trackers (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab,
    # trackio); [] logs to metrics.jsonl only. Each gets the flattened config as hyperparameters; TensorBoard also
    # the evaluation results (mmcl.runs.tracking). wandb runs offline unless you are logged in.
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # false: the final checkpoint holds the weights without the optimiser's and scheduler's state (a third the
    # size with Adam), for runs only evaluated or exported afterwards; it cannot be resumed
    save_optimizer_state: bool = True


@dataclass
class EvalConfig:
    """``eval`` section: which tasks run, shared settings, and per-task options as ``eval.<task>.<key>``."""

    tasks: list[str] | None = None  # None: the modality adapter's default_eval_tasks
    batch_size: PositiveInt = 512
    seed: Seed = 0
    # What train.validate_every (and a study's tuning) scores: a task's metric ("knn.top1") in validation mode
    # (the task's own validation, never the test split); None: the modality's own (text: STS-B dev)
    validation_metric: str | None = None
    # the stratified hold-out of the training split that validates where a task needs one (kNN, linear probe)
    validation_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1
    options: dict = field(default_factory=dict)  # task name -> its options dataclass

    def to_dict(self) -> dict:
        shared = {"tasks": self.tasks, "batch_size": self.batch_size, "seed": self.seed}
        # the validation keys only where set: configs and study definitions from before them stay as they were
        for key, default in VALIDATION_DEFAULTS.items():
            if getattr(self, key) != default:
                shared[key] = getattr(self, key)
        return {**shared, **{name: dataclasses.asdict(value) for name, value in self.options.items()}}


VALIDATION_DEFAULTS = {"validation_metric": None, "validation_fraction": 0.1}


def build_eval_config(values: dict) -> EvalConfig:
    """The ``eval`` section: shared keys of :class:`EvalConfig`, other keys must be registered task names."""
    if not isinstance(values, dict):
        raise ValueError(f"config section 'eval' must be a mapping, got {values!r}")
    shared = {"tasks", "batch_size", "seed", *VALIDATION_DEFAULTS}
    unknown = sorted(set(values) - shared - set(available_tasks()))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in config section 'eval'; valid keys: {sorted(shared)} "
            f"and the task names {available_tasks()}"
        )
    config = build_dataclass(EvalConfig, {k: v for k, v in values.items() if k in shared}, "eval")
    for name in config.tasks or []:
        get_task(name)  # raises for an unknown task, listing the available ones
    named = set(values) - shared | set(config.tasks or [])  # the listed tasks' options are recorded, defaults too
    if config.validation_metric is not None:
        named.add(check_validation_metric(config.validation_metric, "eval.validation_metric"))
    config.options = {
        name: build_dataclass(get_task(name).options, values.get(name) or {}, f"eval.{name}") for name in sorted(named)
    }
    return config


def check_validation_metric(metric: object, key: str) -> str:
    """``metric`` (``task.key``) names a registered task that has a validation score; returns the task's name."""
    if not isinstance(metric, str) or "." not in metric:
        raise ValueError(f"{key}={metric!r} must name a task's metric as TASK.KEY, e.g. knn.top1")
    task = get_task(metric.split(".")[0])  # raises for an unknown task, listing the available ones
    if not task.validation:
        validating = [name for name in available_tasks() if get_task(name).validation]
        raise ValueError(
            f"{key}={metric}: the {task.name} task has no validation score (it would read the test split); use a "
            f"task that validates: {validating}"
        )
    return task.name


SECTIONS = ("modality", "model", "data", "loss", "optim", "train", "eval")


@dataclass
class Config:
    modality: str
    model: Any
    data: Any
    loss: dict
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig
    built_loss: torch.nn.Module | None = field(default=None, repr=False, compare=False)  # see build_loss

    def build_loss(self) -> torch.nn.Module:
        """The config's loss: the instance that validating the config built, on the first call (a config's loss is
        built once), else a new one."""
        built, self.built_loss = self.built_loss, None
        if built is not None:
            return built
        options = dict(self.loss)
        return losses.build(options.pop("name"), **options)

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "loss": dict(self.loss),
            "optim": dataclasses.asdict(self.optim),
            "train": dataclasses.asdict(self.train),
            "eval": self.eval.to_dict(),
        }


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` with YAML 1.2's floats: ``3e-4`` and ``1.0e6`` are numbers, not strings."""


_Loader.yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
for _first in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, regexp) for tag, regexp in _Loader.yaml_implicit_resolvers.get(_first, []) if not tag.endswith(":float")
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """YAML with the safe loader and YAML 1.2 floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` overrides; values are parsed as YAML scalars/lists.

    When ``loss.name`` is overridden, the options of the file's loss that the new loss does not take are dropped,
    with a note: ``loss.name=kcl`` on a file with ``loss.temperature`` trains KCL with its own defaults.
    """
    raw = copy.deepcopy(raw)  # nested sections are edited in place below; the caller's dict stays as it was
    file_loss = dict(raw.get("loss") or {}) if isinstance(raw.get("loss"), dict) else None
    file_optim = dict(raw.get("optim") or {}) if isinstance(raw.get("optim"), dict) else {}
    for override in overrides:
        keys, value = _parse_override(override)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                section = ".".join(keys[: depth + 1])
                raise ValueError(
                    f"override {override!r}: {section} is a value ({node!r}), not a section with keys; set it as "
                    f"{section}=VALUE, or drop the override that set it"
                )
        node[keys[-1]] = value
    _drop_options_of_a_replaced_loss(raw, file_loss, overrides)
    _drop_a_replaced_warmup(raw, file_optim, overrides)
    return raw


def _parse_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value (e.g. loss.temperature=0.3)")
    dotted, text = override.split("=", 1)
    keys = dotted.strip().split(".")
    if keys[0] not in SECTIONS:
        raise ValueError(f"override {override!r}: unknown section {keys[0]!r}; valid sections: {list(SECTIONS)}")
    try:
        return keys, parse_yaml(text)
    except yaml.YAMLError as error:
        problem = str(error).splitlines()[0]
        raise ValueError(
            f"override {override!r}: the value is not valid YAML ({problem}); quote it or fix the brackets"
        ) from error


def _drop_options_of_a_replaced_loss(raw: dict, file_loss: dict | None, overrides: Sequence[str]) -> None:
    loss = raw.get("loss")
    if not file_loss or not isinstance(loss, dict) or loss.get("name") == file_loss.get("name"):
        return
    given = {override.split("=", 1)[0].strip().split(".")[1] for override in overrides if override.startswith("loss.")}
    try:
        valid = losses.options(loss.get("name", "nt_xent"))
    except ValueError:
        return  # an unknown loss name is reported by _checked_loss
    dropped = sorted(key for key in file_loss if key != "name" and key not in given and key not in valid)
    for key in dropped:
        del loss[key]
    if dropped:
        log.warning(
            "note: loss.name=%s does not take the config's loss option(s) %s; they are dropped (the loss's defaults "
            "apply; set them as loss.<option>=... if you meant them)",
            loss.get("name"),
            dropped,
        )


WARMUP_KEYS = ("warmup_steps", "warmup_ratio")


def _drop_a_replaced_warmup(raw: dict, file_optim: dict, overrides: Sequence[str]) -> None:
    """An override of one warm-up key replaces the file's other one, with a note: ``optim.warmup_steps=0`` on a
    config whose warm-up is a ratio (the quickstart's) turns the warm-up off."""
    given = {override.split("=", 1)[0].strip() for override in overrides}
    for key, other in (WARMUP_KEYS, WARMUP_KEYS[::-1]):
        if f"optim.{key}" in given and f"optim.{other}" not in given and file_optim.get(other) is not None:
            del raw["optim"][other]
            log.warning("note: optim.%s replaces the config's optim.%s=%s", key, other, file_optim[other])


ConfigSource = str | Path | Mapping[str, Any]


def read_config(config: ConfigSource) -> tuple[dict, str]:
    """The raw sections of a config and where they came from: a YAML file, a packaged config name (``graph/mutag``,
    see ``mmcl configs``) or a mapping."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "a mapping"
    path = Path(config).expanduser()
    if not path.is_file():
        packaged = packaged_config(str(config))
        if packaged is None:
            raise FileNotFoundError(
                f"config {str(config)!r} is neither a file nor a packaged config; `mmcl configs` lists the packaged"
            )
        path = packaged
    try:
        raw = parse_yaml(read_text(path, "config file"))
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error
    return raw or {}, str(path)


def load_config(config: ConfigSource, overrides: Sequence[str] | None = None) -> Config:
    """A validated config from a YAML file, a packaged config name or a mapping, with dotted overrides applied."""
    raw, origin = read_config(config)
    if not isinstance(raw, dict):
        raise ValueError(
            f"a config must be a mapping of sections {list(SECTIONS)}; {origin} holds {type(raw).__name__}"
        )
    return config_from_dict(apply_overrides(raw, list(overrides or [])))


def config_from_dict(raw: dict) -> Config:
    """Validate the sections of a raw config (overrides already applied)."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid sections: {list(SECTIONS)}")
    modality = raw.get("modality", "vision")
    adapter = modality_class(modality)
    loss, built_loss = _checked_loss(raw.get("loss") or {}, "loss", adapter.default_loss)
    config = Config(
        modality=modality,
        model=build_dataclass(adapter.ModelConfig, raw.get("model") or {}, "model"),
        data=build_dataclass(adapter.DataConfig, raw.get("data") or {}, "data"),
        loss=loss,
        optim=build_dataclass(OptimConfig, raw.get("optim") or {}, "optim"),
        train=build_dataclass(TrainConfig, raw.get("train") or {}, "train"),
        eval=build_eval_config(raw.get("eval") or {}),
        built_loss=built_loss,
    )
    config.train.monitor_losses = [
        validate_loss({"name": m} if isinstance(m, str) else m, f"train.monitor_losses[{i}]")
        for i, m in enumerate(config.train.monitor_losses)
    ]
    check_effective(config)
    build_adapter(config)  # the adapter checks its options (names of registered components, ranges) without data
    return config


def check_effective(config: Config) -> None:
    """Refuse options that cannot take effect together, and a run name that would leave ``train.output_dir``."""
    train, optim = config.train, config.optim
    if train.run_name is not None:
        check_name(train.run_name, "train.run_name")
    if train.precision == "fp16" and train.cpu:
        raise ValueError(
            "train.precision=fp16 with train.cpu=true: fp16 mixed precision needs a GPU; use train.precision=bf16 "
            "on the CPU, or train.precision=no"
        )
    if optim.warmup_steps is not None and optim.warmup_ratio is not None:
        raise ValueError(
            f"optim.warmup_steps={optim.warmup_steps} and optim.warmup_ratio={optim.warmup_ratio} both set the "
            "warm-up; keep one (optim.warmup_ratio follows the run's length)"
        )
    if train.max_steps is not None and optim.warmup_steps is not None and optim.warmup_steps >= train.max_steps:
        raise ValueError(
            f"optim.warmup_steps={optim.warmup_steps} is not shorter than the run (train.max_steps={train.max_steps}): "
            "the learning rate would never reach optim.lr; lower optim.warmup_steps, or set optim.warmup_ratio "
            "instead (a fraction of the run)"
        )


def build_adapter(config: Config) -> ModalityAdapter:
    """The config's modality adapter (its data are read lazily, when first used)."""
    return modality_class(config.modality)(config.model, config.data)


def validate_loss(section: dict, key: str = "loss", default: str = "nt_xent") -> dict:
    """A loss section ``{name, **options}`` checked against the registry (``key`` names it in messages); without a
    name, ``default`` (the modality's :attr:`~mmcl.contract.ModalityAdapter.default_loss`)."""
    return _checked_loss(section, key, default)[0]


def _check_finite(options: dict, key: str) -> None:
    """Loss options are checked by the losses themselves, which take infinity for a large number; none means it."""
    for name, value in options.items():
        if isinstance(value, dict):
            _check_finite(value, f"{key}.{name}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}.{name}={value!r} must be a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
            raise ValueError(f"{key}.{name}={short_number(value)} is too large for a number")


def _checked_loss(section: dict, key: str, default: str) -> tuple[dict, torch.nn.Module]:
    """:func:`validate_loss`'s section, and the loss that checking it built (the registry checks the option names,
    the loss its values: temperature > 0, ...)."""
    if not isinstance(section, dict):
        raise ValueError(f"{key} must be a loss name or a mapping with 'name' and options, got {section!r}")
    options = dict(section)
    name = options.pop("name", default)
    _check_finite(options, key)
    try:
        built = losses.build(name, **options)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None
    return {"name": name, **options}, built
