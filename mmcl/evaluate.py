"""Evaluate a pretrained encoder: run the configured evaluation tasks on it frozen, and write JSON.

Tasks are looked up in :mod:`tasks`' registry (``knn``, ``linear``, ``metrics`` for images; each modality
names its defaults), so this module knows nothing about any one modality or task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mmcl import checkpoint
from mmcl.adapter import Encoder, ModalityAdapter
from mmcl.config import Config, EvalConfig, load_config


def evaluate_encoder(encoder: Encoder, adapter: ModalityAdapter, config: EvalConfig, tasks=None, device="cpu") -> dict:
    """Run the evaluation tasks (``tasks``, else ``config.tasks``, else the adapter's defaults) on a frozen encoder."""
    from tasks import EvalContext, get_task

    names = list(tasks or config.tasks or adapter.default_eval_tasks)
    selected = [get_task(name) for name in names]  # raises for an unknown task before any work
    device = torch.device(device)
    context = EvalContext(encoder.to(device).eval(), adapter, device, config.batch_size, config.seed)
    results: dict = {}
    for task in selected:
        options = config.options.get(task.name) or task.options()
        results[task.name] = task.run(context, options)
    return results


def load_encoder(config: Config, checkpoint_file: Path | None) -> tuple[Encoder, ModalityAdapter]:
    from mmcl.trainer import build_adapter

    torch.manual_seed(config.train.seed)
    adapter = build_adapter(config)
    encoder = adapter.build_encoder()
    if checkpoint_file is not None:
        encoder.load_state_dict(checkpoint.load_checkpoint(checkpoint_file)["model"])
    return encoder, adapter


def evaluate_run(
    target: str | Path,
    tasks=None,
    random_init: bool = False,
    output: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Evaluate a run folder (its best, else latest, checkpoint), a checkpoint file, or a config file's encoder
    as the adapter builds it (e.g. a published text model); write the results as JSON.

    Results go to ``output``, else to ``RUN/eval.json`` for a run (nowhere for a config file). ``overrides``
    (dotted ``section.key=value``) apply to a config file only.
    """
    target = Path(target)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        config, checkpoint_file, run_dir = load_config(target, overrides), None, None
    elif overrides:
        raise ValueError(f"overrides {overrides} apply to a config file only, not to the run {target}")
    else:
        run_dir, checkpoint_file = checkpoint.resolve(target)
        config = load_config(run_dir / "config.yaml")
    if random_init:
        checkpoint_file = None
    encoder, adapter = load_encoder(config, checkpoint_file)
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


def format_results(results: dict) -> str:
    """A two-column table of each task's headline numbers."""
    from tasks import available_tasks, get_task

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


def quickstart(output_dir: str = "runs", overrides: list[str] | None = None) -> dict:
    """Pretrain on the bundled digits images, then evaluate it beside a random-init encoder."""
    from mmcl.trainer import pretrain

    config_file = Path(__file__).with_name("quickstart.yaml")
    config = load_config(config_file, [f"train.output_dir={output_dir}", *(overrides or [])])
    run_dir = pretrain(config)
    pretrained = evaluate_run(run_dir)
    baseline = evaluate_run(run_dir, random_init=True)
    lines = ["", f"{'':22}{'random init':>12}{'pretrained':>12}"]
    for task in ("knn", "linear"):
        if task in pretrained:
            lines.append(f"{task + ' top-1 (%)':22}{baseline[task]['top1']:12.2f}{pretrained[task]['top1']:12.2f}")
    print("\n".join(lines) + f"\nrun folder: {run_dir}")
    return {"pretrained": pretrained, "random_init": baseline, "run_dir": str(run_dir)}
