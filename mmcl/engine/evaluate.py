"""Evaluate a pretrained encoder: run the configured evaluation tasks on it frozen, and keep every result.

Tasks are looked up in :mod:`mmcl.tasks`' registry (``knn``, ``linear``, ``metrics`` for images; each modality
names its defaults), so this module knows nothing about any one modality or task.

Every evaluation is stored in its run folder's ``eval.json`` under the encoder it scored (a checkpoint's name,
``random_init``, or ``as_built`` for a config's encoder without training), one entry per task with the task's
options, the seed, the library versions and the time, merged with what is there (:func:`mmcl.runs.results.
record_evaluation`). Evaluating a config creates an evaluation folder under ``train.output_dir`` for its results.
An evaluation of a trained run is also shown where runs are compared (:func:`publish_evaluation`): the model card of
its export is rewritten from ``eval.json`` and, when the run logs to TensorBoard, its headline numbers are added there.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mmcl.contract import Encoder, ModalityAdapter
from mmcl.contract.export import is_export
from mmcl.engine.config import Config, ConfigSource, EvalConfig, build_adapter, load_config
from mmcl.engine.configs import packaged_config, packaged_configs, packaged_study
from mmcl.runs import checkpoints, folder, tracking
from mmcl.runs.card import write_model_card
from mmcl.runs.files import config_file, export_folder, is_run_folder, now
from mmcl.runs.record import library_versions
from mmcl.runs.results import AS_BUILT, RANDOM_INIT, record_evaluation
from mmcl.tasks import EvalContext, available_tasks, get_task

log = logging.getLogger("mmcl")


def evaluate_encoder(
    encoder: Encoder,
    adapter: ModalityAdapter,
    config: EvalConfig,
    tasks: Sequence[str] | None = None,
    device="cpu",
    validation: bool = False,
    progress: bool = False,
) -> dict[str, dict]:
    """Run the evaluation tasks (``tasks``, else ``config.tasks``, else the adapter's defaults) on a frozen encoder;
    with ``validation``, each task's validation instead (``config.validation_fraction``; the test split unread);
    ``progress``: each task shows its long loops on stderr, where it is a terminal.

    Returns ``{task: result}``; each result also holds the task's ``options`` and its ``seconds``.
    """
    names = list(tasks or config.tasks or adapter.default_eval_tasks)
    selected = [get_task(name) for name in names]  # raises for an unknown task before any work
    device = torch.device(device)
    context = EvalContext(
        encoder.to(device).eval(),
        adapter,
        device,
        config.batch_size,
        config.seed,
        progress_bars=progress,
        validation=config.validation_fraction if validation else None,
    )
    results: dict = {}
    for task in selected:
        context.task = task.name
        options = config.options.get(task.name) or task.options()
        started = time.perf_counter()
        result = task.run(context, options)
        results[task.name] = {
            **result,
            "options": dataclasses.asdict(options),
            "seconds": round(time.perf_counter() - started, 2),
        }
    return results


def evaluation_device(config: Config) -> str:
    """Where evaluation runs: the GPU when there is one and the run may use it, else the CPU."""
    return "cuda" if torch.cuda.is_available() and not config.train.cpu else "cpu"


def build_encoder(
    config: Config, checkpoint_file: Path | None, random_init: bool = False
) -> tuple[Encoder, ModalityAdapter]:
    """The config's encoder with the checkpoint's weights; without one, as the adapter builds it (seeded by
    ``train.seed``), or freshly initialised with ``random_init`` (even where the modality starts from pretrained
    weights)."""
    torch.manual_seed(config.train.seed)
    adapter = build_adapter(config)
    encoder = adapter.build_random_encoder() if random_init else adapter.build_encoder()
    if checkpoint_file is not None:
        checkpoints.load_model_state(encoder, checkpoints.load_checkpoint(checkpoint_file), checkpoint_file)
    return encoder, adapter


@torch.no_grad()
def validation_score(encoder: Encoder, adapter: ModalityAdapter, config: Config, device: torch.device | str) -> float:
    """The score that checkpoint selection and tuning maximise (:func:`validation_name` names it):
    ``eval.validation_metric`` scored in validation mode (the task's own validation,
    :attr:`~mmcl.tasks.EvalTask.validation`), else the adapter's (:class:`~mmcl.contract.Validation`), on the
    frozen encoder."""
    task, options, key, validation = _validation(adapter, config)
    context = EvalContext(encoder.eval(), adapter, torch.device(device), config.eval.batch_size, config.eval.seed,
                          validation=validation)  # fmt: skip
    score = lookup(task.run(context, options), key)
    if not isinstance(score, float):
        raise ValueError(f"validation: the {task.name} task's result has no number at {key!r}")
    return score


def validation_name(adapter: ModalityAdapter, config: Config) -> str:
    """The name :func:`validation_score` is logged under (``val_<name>``): ``knn_top1``, ``stsb_dev_spearman``."""
    metric = config.eval.validation_metric
    return metric.replace(".", "_") if metric is not None else adapter.validation.name


def _validation(adapter: ModalityAdapter, config: Config) -> tuple[Any, Any, str, float | None]:
    """The task, its options, the result key and the validation fraction (None: none) of the validation."""
    metric = config.eval.validation_metric
    if metric is not None:
        task_name, key = metric.split(".", 1)
        task = get_task(task_name)
        return task, config.eval.options.get(task_name) or task.options(), key, config.eval.validation_fraction
    spec = adapter.validation
    task = get_task(spec.task)
    return (
        task,
        dataclasses.replace(config.eval.options.get(spec.task) or task.options(), **spec.options),
        spec.metric,
        None,
    )


def evaluate_run(
    target: ConfigSource | Config,
    tasks: Sequence[str] | None = None,
    random_init: bool = False,
    output: str | Path | None = None,
    overrides: Sequence[str] | None = None,
) -> dict:
    """Evaluate a run folder (its best, else latest readable, checkpoint), a checkpoint file, or a config's encoder
    as the adapter builds it (a file, packaged name, mapping or validated :class:`Config`; e.g. a published text
    model).

    The results are merged into the run's ``eval.json`` (a config gets an evaluation folder under
    ``train.output_dir``) and, with ``output``, also written there as one JSON file. ``overrides`` (dotted
    ``section.key=value``) apply to a config only.

    Returns:
        ``{task: result, ..., "encoder", "checkpoint", "loss", "seconds", "run_dir", "results_file"}``.
    """
    started = time.perf_counter()
    check_target(target)
    if is_run(target):
        if overrides:
            raise ValueError(f"overrides {list(overrides)} apply to a config only, not to the run {target}")
        run_dir, candidates = checkpoints.resolve(target)
        config = load_config(config_file(run_dir))
        checkpoint_file = None if random_init else checkpoints.load_newest_readable(candidates)[0]
    else:
        config = target if isinstance(target, Config) else load_config(target, overrides)
        checkpoint_file, run_dir = None, _evaluation_folder(config)
    if config.train.threads:  # the run's thread count (a study's cell shares the machine with others)
        torch.set_num_threads(config.train.threads)
    encoder, adapter = build_encoder(config, checkpoint_file, random_init)
    return evaluate_and_record(config, run_dir, encoder, adapter, checkpoint_file, random_init, tasks, output, started)


def evaluate_and_record(
    config: Config,
    run_dir: Path,
    encoder: Encoder,
    adapter: ModalityAdapter,
    checkpoint_file: Path | None,
    random_init: bool = False,
    tasks: Sequence[str] | None = None,
    output: str | Path | None = None,
    started: float | None = None,
) -> dict:
    """Evaluate ``encoder`` (holding ``checkpoint_file``'s weights; None: as built, or freshly initialised with
    ``random_init``) and keep the results in ``run_dir``'s ``eval.json``; returns them as :func:`evaluate_run`.
    An evaluation right after training passes the trainer's encoder and adapter here (:class:`~mmcl.engine.
    trainer.Trained`), so nothing is built or read again."""
    started = time.perf_counter() if started is None else started
    key = RANDOM_INIT if random_init else checkpoint_file.stem if checkpoint_file else AS_BUILT
    results = evaluate_encoder(encoder, adapter, config.eval, tasks, evaluation_device(config),
                               progress=config.train.progress_bar)  # fmt: skip
    stored = {"checkpoint": str(checkpoint_file) if checkpoint_file else None, "seed": config.eval.seed,
              "versions": library_versions(), "evaluated": now()}  # fmt: skip
    for task, result in results.items():
        results_file = record_evaluation(run_dir, key, task, {**result, **stored})
    if checkpoint_file is not None or random_init:
        publish_evaluation(run_dir, config, adapter, key, results, checkpoint_file)
    results.update(
        encoder=key if key in (RANDOM_INIT, AS_BUILT) else "pretrained",
        checkpoint=stored["checkpoint"],
        loss=config.loss["name"],
        seconds=round(time.perf_counter() - started, 2),
        run_dir=str(run_dir),
        results_file=str(results_file),
    )
    if output is not None:
        Path(output).write_text(json.dumps(results, indent=2))
    return results


def publish_evaluation(
    run_dir: Path, config: Config, adapter: ModalityAdapter, key: str, results: dict, checkpoint_file: Path | None
) -> None:
    """Show a stored evaluation of a trained run where runs are compared: the model card of its export (rewritten
    from ``eval.json``) and, when the run logs to TensorBoard, its scalars for the HParams view."""
    if is_export(export_folder(run_dir)):
        write_model_card(run_dir, adapter)
    if "tensorboard" in config.train.loggers:
        step = 0 if checkpoint_file is None else checkpoint_step(checkpoint_file)
        tracking.log_evaluation(run_dir, key, results, step)


def checkpoint_step(path: Path) -> int:
    """The training step of a checkpoint file (``step_NNNNNNNN.pt`` by its name, ``best.pt`` by its content)."""
    match = checkpoints.PATTERN.search(Path(path).name)
    return int(match.group(1)) if match else int(checkpoints.load_checkpoint(path).get("step", 0))


def _evaluation_folder(config: Config) -> Path:
    """The folder for the results of a config's encoder evaluated without training: ``train.output_dir/run_name``
    (kept and merged into when it holds the same config), else a new timestamped folder."""
    dataset = getattr(config.data, "dataset", None) or Path(str(getattr(config.data, "path", None) or "data")).stem
    name = f"{config.modality}-{dataset}-as_built-{time.strftime('%Y%m%d-%H%M%S')}".replace("/", "_")
    existing = Path(config.train.output_dir).expanduser() / (config.train.run_name or name)
    if config.train.run_name and is_run_folder(existing):
        changes = folder.config_changes(folder.parse_saved_config(existing), config.to_dict())
        if changes:
            listed = ", ".join(f"{key}: {saved!r} there, {new!r} here" for key, (saved, new) in changes.items())
            raise ValueError(
                f"{existing} holds a run or evaluation of another config ({listed}); set another train.run_name "
                f"to evaluate this config as built, or evaluate the run itself with `mmcl evaluate {existing}`"
            )
        return existing
    created = folder.create_run_folder(config.train.output_dir, config.train.run_name, name)
    folder.write_config(created, config.to_dict())
    return created


def check_target(target: ConfigSource | Config) -> None:
    """Refuse a target of ``mmcl evaluate``/``mmcl pretrain`` that names nothing, before anything is read or written:
    no run folder, checkpoint, config file or packaged config has its name (similar names are suggested)."""
    if isinstance(target, (Mapping, Config)):
        return
    name, path = str(target), Path(target).expanduser()
    if path.exists() or packaged_config(name) is not None:
        return
    if packaged_study(name) is not None:
        raise ValueError(f"{name!r} is a packaged study, not a config: run it with `mmcl compare {name}`")
    siblings = [str(path.parent / p.name) for p in path.parent.iterdir()] if path.parent.is_dir() else []
    similar = difflib.get_close_matches(name, [*siblings, *packaged_configs()], n=3)
    raise FileNotFoundError(
        f"no run folder, checkpoint, config file or packaged config is named {name!r}"
        + (f" (similar: {', '.join(similar)})" if similar else "")
        + ". Give a run folder (the `run folder:` that mmcl pretrain printed, under train.output_dir, runs/ by "
        "default), a checkpoint (RUN/checkpoints/step_*.pt), a YAML config file, or a packaged config name "
        "(`mmcl configs` lists them)"
    )


def is_run(target: ConfigSource | Config) -> bool:
    """Whether ``target`` is a run folder or a checkpoint file (else a config: file, packaged name or mapping)."""
    if isinstance(target, (Mapping, Config)):
        return False
    path = Path(target).expanduser()
    return path.is_dir() or path.suffix == ".pt"


def format_results(results: dict) -> str:
    """A two-column table of each task's headline numbers, and where the results are stored."""
    rows = [(key, str(results[key])) for key in ("encoder", "loss") if key in results]
    for name in (name for name in results if name in available_tasks()):
        for key, number in get_task(name).headline_values(results[name]).items():
            rows.append((f"{name} {key}", f"{number:.4g}"))
    if "results_file" in results:
        rows.append(("results", results["results_file"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def lookup(results: dict, dotted: str):
    """``results["a"]["b"]`` for ``"a.b"``; None when a key is missing."""
    for key in dotted.split("."):
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results
