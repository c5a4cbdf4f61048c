"""The model card (``RUN/model/README.md``) beside a run's export: how to load it, how it was trained, how it scored.

Hugging Face's card layout: YAML front matter (the modality's ``metadata``: ``library_name``, ``tags``,
``pipeline_tag``, ``base_model``), then Markdown sections:

* **Usage**: the modality's own (:meth:`mmcl.contract.ModalityAdapter.model_card`): sentence-transformers and
  MTEB, torchvision, torch_geometric;
* **Training**: the starting point (the model section), the loss and its options, the data, the training budget
  (steps, epochs, batch per process x processes, optimiser, precision, wall time) and which weights were exported;
* **Evaluation**: every result of ``RUN/eval.json`` (the task's headline numbers per evaluated encoder);
* **Configuration**: ``config.yaml`` as run.

The engine writes it when a run exports its encoder and again whenever an evaluation of the run is stored
(``mmcl evaluate RUN``), so the card always shows the results ``eval.json`` holds. The front matter is
``huggingface_hub``'s (:class:`~huggingface_hub.ModelCardData`, so the Hub reads what it writes); the sections are
mmcl's own text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from mmcl.contract import ModalityAdapter
from mmcl.contract.export import read_manifest
from mmcl.runs.files import config_file, export_folder, write_atomically
from mmcl.runs.record import RunRecord, library_versions
from mmcl.runs.results import read_evaluations
from mmcl.tasks import available_tasks, get_task

CARD = "README.md"
_PRECISION = {"no": "float32", "bf16": "bfloat16 mixed precision", "fp16": "float16 mixed precision"}


def write_model_card(run_dir: Path, adapter: ModalityAdapter) -> Path:
    """Write ``RUN/model/README.md`` from the run folder's config, ``run.json``, ``eval.json`` and the export's
    manifest; returns its path."""
    run_dir = Path(run_dir)
    folder = export_folder(run_dir)
    config = yaml.safe_load(config_file(run_dir).read_text())
    card = adapter.model_card(folder)
    sections = [
        f"# {run_dir.name}\n\nA {config['modality']} encoder trained with mmcl {library_versions()['mmcl']} by "
        f"contrastive learning (loss `{config['loss']['name']}`).",
        f"## Usage\n\n{card.usage}",
        "## Training\n\n" + _table(_training_rows(run_dir, config)),
        "## Evaluation\n\n" + _evaluations(run_dir),
        "## Configuration\n\n```yaml\n" + yaml.safe_dump(config, sort_keys=False).strip() + "\n```",
    ]
    text = f"---\n{ModelCardData(**card.metadata).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    path = folder / CARD
    write_atomically(path, str(ModelCard(text)))
    return path


def _training_rows(run_dir: Path, config: dict) -> list[tuple[str, str]]:
    train, optim = config["train"], config["optim"]
    loss = {key: value for key, value in config["loss"].items() if key != "name"}
    sessions = RunRecord(run_dir).read().get("sessions", [])
    last = sessions[-1] if sessions else {}
    world = last.get("world_size", 1)
    budget = f"{last.get('at_step', last.get('total_steps'))} steps"
    if not train.get("max_steps"):
        budget += f" ({train['epochs']} epochs)"
    rows = [
        ("model", _inline(config["model"])),
        ("loss", f"`{config['loss']['name']}` {_inline(loss)}" if loss else f"`{config['loss']['name']}`"),
        ("data", _inline({key: value for key, value in config["data"].items() if value not in (None, [], {})})),
        ("budget", f"{budget}, batch {train['batch_size']} x {world} process(es), seed {train['seed']}"),
        (
            "optimiser",
            f"{optim['name']}, lr {optim['lr']}, {optim['schedule']} schedule, "
            f"{last.get('warmup_steps', optim.get('warmup_steps') or 0)} warm-up steps, weight decay "
            f"{optim['weight_decay']}",
        ),  # fmt: skip
        ("precision", f"{_PRECISION.get(train['precision'], train['precision'])} on {last.get('device', '?')}"),
        ("wall time", _wall_time(sessions)),
        ("exported weights", _exported_weights(run_dir)),
    ]
    return rows


def _exported_weights(run_dir: Path) -> str:
    run = read_manifest(export_folder(run_dir)).get("run", {})
    step = run.get("step")
    if run.get("checkpoint") == "best":
        return f"the best on validation ({run.get('metric')} = {run.get('value'):.4g}), step {step}"
    return f"the final weights, step {step}"


def _wall_time(sessions: list[dict]) -> str:
    """The sessions' summed wall time, or "in progress" while the last one has not ended. ``run.json`` keeps whole
    seconds, so a session within one second lasts 0 s: it has ended all the same."""
    if not sessions or "ended" not in sessions[-1]:
        return "in progress"
    seconds = sum(_epoch(s["ended"]) - _epoch(s["started"]) for s in sessions if "started" in s and "ended" in s)
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z"))


def _evaluations(run_dir: Path) -> str:
    rows = []
    for encoder, tasks in read_evaluations(run_dir).items():
        for task, result in tasks.items():
            if task not in available_tasks():
                continue
            for key, value in get_task(task).headline_values(result).items():
                rows.append((encoder, task, key, f"{value:.4g}"))
    if not rows:
        return f"Not evaluated yet: `mmcl evaluate {run_dir}` adds the results here."
    lines = ["| encoder | task | metric | value |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + "\n\nAll results, with each task's options: `eval.json` in the run folder."


def _inline(values: dict) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])
