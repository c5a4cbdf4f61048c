"""Evaluate a pretrained encoder: run the configured evaluation tasks on it frozen, and write JSON.

Tasks are looked up in :mod:`mmcl.tasks`' registry (``knn``, ``linear``, ``metrics`` for images; each modality
names its defaults), so this module knows nothing about any one modality or task.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from mmcl.contract import Encoder, ModalityAdapter
from mmcl.engine import checkpoint
from mmcl.engine.config import Config, ConfigSource, EvalConfig, build_adapter, load_config
from mmcl.tasks import EvalContext, available_tasks, get_task


def evaluate_encoder(encoder: Encoder, adapter: ModalityAdapter, config: EvalConfig, tasks=None, device="cpu") -> dict:
    """Run the evaluation tasks (``tasks``, else ``config.tasks``, else the adapter's defaults) on a frozen encoder."""
    names = list(tasks or config.tasks or adapter.default_eval_tasks)
    selected = [get_task(name) for name in names]  # raises for an unknown task before any work
    device = torch.device(device)
    context = EvalContext(encoder.to(device).eval(), adapter, device, config.batch_size, config.seed)
    results: dict = {}
    for task in selected:
        options = config.options.get(task.name) or task.options()
        results[task.name] = task.run(context, options)
    return results


def build_encoder(config: Config, checkpoint_file: Path | None) -> tuple[Encoder, ModalityAdapter]:
    """The config's encoder with the checkpoint's weights (freshly initialised, seeded by ``train.seed``, without)."""
    torch.manual_seed(config.train.seed)
    adapter = build_adapter(config)
    encoder = adapter.build_encoder()
    if checkpoint_file is not None:
        encoder.load_state_dict(checkpoint.load_checkpoint(checkpoint_file)["model"])
    return encoder, adapter


@torch.no_grad()
def validation_score(encoder: Encoder, adapter: ModalityAdapter, config: Config, device: torch.device | str) -> float:
    """The adapter's validation (:class:`~mmcl.contract.Validation`): its task on the frozen encoder, on top of the
    config's options for that task; returns the score that checkpoint selection maximises."""
    spec = adapter.validation
    task = get_task(spec.task)
    options = dataclasses.replace(config.eval.options.get(spec.task) or task.options(), **spec.options)
    context = EvalContext(encoder.eval(), adapter, torch.device(device), config.eval.batch_size, config.eval.seed)
    score = _lookup(task.run(context, options), spec.metric)
    if not isinstance(score, float):
        raise ValueError(f"validation: the {spec.task} task's result has no number at {spec.metric!r}")
    return score


def evaluate_run(
    target: ConfigSource,
    tasks=None,
    random_init: bool = False,
    output: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Evaluate a run folder (its best, else latest, checkpoint), a checkpoint file, or a config's encoder
    as the adapter builds it (a file, packaged name or mapping; e.g. a published text model); write the results
    as JSON.

    Results go to ``output``, else to ``RUN/eval.json`` for a run (nowhere for a config). ``overrides``
    (dotted ``section.key=value``) apply to a config only.
    """
    if is_run(target):
        if overrides:
            raise ValueError(f"overrides {overrides} apply to a config only, not to the run {target}")
        run_dir, checkpoint_file = checkpoint.resolve(target)
        config = load_config(run_dir / "config.yaml")
    else:
        config, checkpoint_file, run_dir = load_config(target, overrides), None, None
    if random_init:
        checkpoint_file = None
    encoder, adapter = build_encoder(config, checkpoint_file)
    device = "cuda" if torch.cuda.is_available() and not config.train.cpu else "cpu"
    started = time.perf_counter()
    results = evaluate_encoder(encoder, adapter, config.eval, tasks, device)
    results.update(
        checkpoint=None if checkpoint_file is None else str(checkpoint_file),
        encoder="random_init" if random_init else "pretrained" if checkpoint_file else "as_built",
        loss=config.loss["name"],
        seconds=round(time.perf_counter() - started, 2),
    )
    if output is None and run_dir is not None:
        output = run_dir / ("eval_random_init.json" if random_init else "eval.json")
    if output is not None:
        Path(output).write_text(json.dumps(results, indent=2))
    return results


def is_run(target: ConfigSource) -> bool:
    """Whether ``target`` is a run folder or a checkpoint file (else a config: file, packaged name or mapping)."""
    if isinstance(target, Mapping):
        return False
    path = Path(target).expanduser()
    return path.is_dir() or path.suffix == ".pt"


def format_results(results: dict) -> str:
    """A two-column table of each task's headline numbers."""
    rows = [(key, str(results[key])) for key in ("encoder", "loss") if key in results]
    for name in (name for name in results if name in available_tasks()):
        for key in get_task(name).headline:
            number = _lookup(results[name], key)
            if isinstance(number, float):
                rows.append((f"{name} {key}", f"{number:.4g}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _lookup(results: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results
