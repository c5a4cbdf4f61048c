"""Run configuration: YAML files with dotted command-line overrides, validated on load.

A config has the sections ``modality``, ``model``, ``data`` (validated by the modality adapter's
``ModelConfig``/``DataConfig``), ``loss`` (``name`` plus that loss's options), ``optim``, ``train`` and
``eval``. Files are read with ``yaml.safe_load`` and can only name registered components (losses,
modalities, backbones, tasks), never an import path::

    mmcl pretrain quickstart loss.name=dhel loss.temperature=0.3 train.epochs=5
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmcl import losses
from mmcl.contract import ModalityAdapter
from mmcl.engine.configs import packaged_config
from mmcl.modalities import modality_class
from mmcl.tasks import available_tasks, get_task


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "lars", "adam"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    lars_trust_coefficient: float = 0.001
    exclude_bias_and_norm: bool = True  # from weight decay and the LARS adaptation


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    batch_size: int = 256  # per process; the loss sees world_size * batch_size pairs
    seed: int = 0
    shuffle: Literal["every_epoch", "once"] = "every_epoch"  # once: the same batch order every epoch (GraphCL TU)
    drop_last: bool = True  # false: an epoch ends with the smaller remaining batch (one process only; GraphCL TU)
    precision: Literal["no", "fp16", "bf16"] = "no"
    grad_clip: float | None = None
    grad_accumulation: int = 1  # accumulates gradients; does NOT add negatives to the loss
    grad_cache_chunk: int | None = None  # GradCache: encode the batch in chunks of this many rows (no batch norm)
    log_every: int = 10
    checkpoint_every: int | None = None  # steps; a checkpoint is always written at the end
    validate_every: int | None = None  # steps; keep checkpoints/best.pt by the adapter's selection metric
    keep_checkpoints: int = 2
    num_workers: int = 0
    output_dir: str = "runs"
    run_name: str | None = None
    cpu: bool = False
    progress_bar: bool = True


@dataclass
class EvalConfig:
    """``eval`` section: which tasks run, shared settings, and per-task options as ``eval.<task>.<key>``."""

    tasks: list[str] | None = None  # None: the modality adapter's default_eval_tasks
    batch_size: int = 512
    seed: int = 0
    options: dict = field(default_factory=dict)  # task name -> its options dataclass

    def to_dict(self) -> dict:
        shared = {"tasks": self.tasks, "batch_size": self.batch_size, "seed": self.seed}
        return {**shared, **{name: dataclasses.asdict(value) for name, value in self.options.items()}}


def build_eval_config(values: dict) -> EvalConfig:
    """The ``eval`` section: shared keys of :class:`EvalConfig`, other keys must be registered task names."""
    if not isinstance(values, dict):
        raise ValueError(f"config section 'eval' must be a mapping, got {values!r}")
    shared = {"tasks", "batch_size", "seed"}
    unknown = sorted(set(values) - shared - set(available_tasks()))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in config section 'eval'; valid keys: {sorted(shared)} "
            f"and the task names {available_tasks()}"
        )
    config = build_dataclass(EvalConfig, {k: v for k, v in values.items() if k in shared}, "eval")
    for name in config.tasks or []:
        get_task(name)  # raises for an unknown task, listing the available ones
    config.options = {
        name: build_dataclass(get_task(name).options, values[name] or {}, f"eval.{name}")
        for name in sorted(set(values) - shared)
    }
    return config


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

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides; values are parsed as YAML scalars/lists."""
    raw = copy.deepcopy(raw)  # nested sections are edited in place below; the caller's dict stays as it was
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r} must look like section.key=value (e.g. loss.temperature=0.3)")
        dotted, value = override.split("=", 1)
        keys = dotted.strip().split(".")
        if keys[0] not in SECTIONS:
            raise ValueError(f"override {override!r}: unknown section {keys[0]!r}; valid sections: {list(SECTIONS)}")
        if len(keys) == 1:
            raw[keys[0]] = yaml.safe_load(value)
            continue
        node = raw.setdefault(keys[0], {})
        for key in keys[1:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {key!r} is not a section")
        node[keys[-1]] = yaml.safe_load(value)
    return raw


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
        raw = yaml.safe_load(path.read_text())
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
    raw = apply_overrides(raw, list(overrides or []))
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid sections: {list(SECTIONS)}")
    modality = raw.get("modality", "vision")
    adapter = modality_class(modality)
    config = Config(
        modality=modality,
        model=build_dataclass(adapter.ModelConfig, raw.get("model") or {}, "model"),
        data=build_dataclass(adapter.DataConfig, raw.get("data") or {}, "data"),
        loss=validate_loss(raw.get("loss") or {}),
        optim=build_dataclass(OptimConfig, raw.get("optim") or {}, "optim"),
        train=build_dataclass(TrainConfig, raw.get("train") or {}, "train"),
        eval=build_eval_config(raw.get("eval") or {}),
    )
    build_adapter(config)  # the adapter checks its options (names of registered components, ranges) without data
    return config


def build_adapter(config: Config) -> ModalityAdapter:
    """The config's modality adapter (its data are read lazily, when first used)."""
    return modality_class(config.modality)(config.model, config.data)


def validate_loss(section: dict) -> dict:
    section = dict(section)
    name = section.pop("name", "nt_xent")
    valid = losses.options(name)  # raises for an unknown loss name, listing the available ones
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for loss {name!r} in config section 'loss'; valid: {sorted(valid)}"
        )
    losses.build(name, **section)  # validates the values (temperature > 0, ...)
    return {"name": name, **section}


def build_dataclass(cls: type, values: dict, section: str):
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section {section!r}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {key: _check_type(f"{section}.{key}", value, hints[key]) for key, value in values.items()}
    return cls(**checked)


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(name, value, arg)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{name}={value!r} does not match {hint}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name}={value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{name}={value!r} must be a list")
        return [_check_type(f"{name}[{i}]", item, args[0]) for i, item in enumerate(value)] if args else value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is dict and isinstance(value, dict):
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{name}={value!r} must be of type {getattr(hint, '__name__', hint)}")
    return value
