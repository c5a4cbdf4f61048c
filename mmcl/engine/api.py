"""mmcl's Python API: :func:`pretrain`, :func:`evaluate`, :func:`load_encoder` (the ``mmcl`` CLI is a layer over it).

>>> import tempfile, torch, mmcl
>>> run = mmcl.pretrain("quickstart", ["train.max_steps=2", "data.train_subset=64",
...                                    "train.batch_size=32", "train.progress_bar=false",
...                                    f"train.output_dir={tempfile.mkdtemp()}"])
>>> run.folder.is_dir(), [record["step"] for record in run.metrics()][-1]
(True, 2)
>>> results = mmcl.evaluate(run, tasks=["knn"])
>>> 0 <= results["knn"]["top1"] <= 100
True
>>> encoder = mmcl.load_encoder(run)
>>> images = torch.zeros(4, 1, 8, 8)
>>> encoder(images).shape, encoder.features(images).shape
(torch.Size([4, 64]), torch.Size([4, 128]))
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmcl.contract import Encoder
from mmcl.contract.export import MANIFEST, is_export, read_manifest
from mmcl.engine.config import Config, ConfigSource, load_config
from mmcl.engine.evaluate import build_encoder, check_target, evaluate_run
from mmcl.engine.plugins import load_plugins
from mmcl.modalities import modality_class
from mmcl.runs import checkpoints
from mmcl.runs.files import config_file
from mmcl.runs.results import read_evaluations, read_metrics


@dataclass(frozen=True)
class Run:
    """A run folder: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, evaluation results.

    A ``Run`` is path-like: it can be passed wherever mmcl takes a run folder.
    """

    folder: Path

    def __fspath__(self) -> str:
        return os.fspath(self.folder)

    @property
    def config(self) -> Config:
        """The run's saved configuration."""
        return load_config(config_file(self.folder))

    @property
    def checkpoint(self) -> Path:
        """The checkpoint that evaluation uses: the best on validation when the run selected one, else the latest
        (the newest readable one)."""
        return checkpoints.load_newest_readable(checkpoints.resolve(self.folder)[1])[0]

    def evaluations(self) -> dict:
        """Every evaluation of the run (``eval.json``): ``{encoder: {task: result}}``, the encoder being a
        checkpoint's name, ``random_init`` or ``as_built``."""
        return read_evaluations(self.folder)

    def metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` (loss, learning rate, diagnostics per logged step)."""
        return read_metrics(self.folder)


RunLike = Run | str | os.PathLike


def pretrain(
    config: ConfigSource,
    overrides: Sequence[str] | None = None,
    *,
    resume: bool = False,
    allow_world_size_change: bool = False,
    plugins: Iterable[str] = (),
) -> Run:
    """Pretrain an encoder and return its run.

    Args:
        config: a YAML file, a packaged config name (``"graph/mutag"``; ``mmcl configs`` lists them), a mapping of
            config sections, or a run folder to continue (with ``resume=True``).
        overrides: dotted ``section.key=value`` strings, as on the command line. On a resume, only those that cannot
            change what the finished steps computed are accepted (:data:`mmcl.runs.folder.RESUMABLE`).
        resume: continue the run folder ``config`` (or the config's ``train.run_name``) from its newest readable
            checkpoint. Without it an existing run folder is refused: every new run gets a new folder.
        allow_world_size_change: accept resuming with another number of processes (the global batch changes).
        plugins: modules or ``.py`` files that register your own components (see :mod:`mmcl.engine.plugins`).
    """
    from mmcl.engine.trainer import pretrain as train

    load_plugins(plugins)
    check_target(config)
    target = None if isinstance(config, Mapping) else Path(os.fspath(config)).expanduser()
    if target is not None and target.is_dir():  # a run folder: its saved config (continued only with resume)
        loaded, run_dir = load_config(config_file(target), overrides), target
    else:
        loaded, run_dir = load_config(config, overrides), None
        if resume and not loaded.train.run_name:
            raise ValueError("resume with a config needs train.run_name (or pass the run folder instead)")
    return Run(train(loaded, run_dir, resume=resume, allow_world_size_change=allow_world_size_change))


def evaluate(
    target: RunLike | ConfigSource,
    tasks: Sequence[str] | None = None,
    *,
    overrides: Sequence[str] | None = None,
    random_init: bool = False,
    output: str | os.PathLike | None = None,
    plugins: Iterable[str] = (),
) -> dict:
    """Evaluate a run (its best, else latest, checkpoint), a checkpoint file, or a config's encoder as built.

    Args:
        target: a :class:`Run` or run folder, a checkpoint file, or a config (file, packaged name or mapping) whose
            encoder is evaluated without training (e.g. a published text model).
        tasks: evaluation task names (default: the config's ``eval.tasks``, else the modality's).
        overrides: dotted overrides, for a config target only.
        random_init: evaluate the same encoder freshly initialised instead, as a baseline.
        output: a JSON file for these results, besides the run folder's ``eval.json`` (where every evaluation is
            kept, merged: :attr:`Run.evaluations`; a config gets an evaluation folder under ``train.output_dir``).

    Returns:
        The results: one entry per task, plus ``encoder``, ``checkpoint``, ``loss``, ``seconds``, ``run_dir`` and
        ``results_file``.
    """
    load_plugins(plugins)
    target = target if isinstance(target, Mapping) else os.fspath(target)
    return evaluate_run(target, tasks, random_init, output, overrides)


def load_encoder(target: RunLike, *, plugins: Iterable[str] = ()) -> Encoder:
    """The trained encoder of a run (its best, else latest, checkpoint), of a checkpoint file, or of an export
    folder (a run's ``model/``, written at the end of training, which needs no run folder), in eval mode.

    ``encoder(inputs)`` gives the loss embeddings (the projection head's), ``encoder.features(inputs)`` the
    backbone's; a text encoder also has ``encoder.encode(sentences)``, as sentence-transformers' models do.
    """
    load_plugins(plugins)
    path = Path(os.fspath(target)).expanduser()
    if is_export(path):
        return _load_export(path)
    run_dir, candidates = checkpoints.resolve(path)
    checkpoint_file, _ = checkpoints.load_newest_readable(candidates)
    encoder, _ = build_encoder(load_config(config_file(run_dir)), checkpoint_file)
    return encoder.eval()


def _load_export(folder: Path) -> Encoder:
    """An export folder's encoder; a damaged manifest (a missing or mangled entry) is an error naming the folder."""
    manifest = read_manifest(folder)
    try:
        return modality_class(manifest["modality"]).load_export(folder).eval()
    except (KeyError, AttributeError, TypeError, IndexError) as error:
        raise ValueError(
            f"export {folder} is damaged: its {MANIFEST} lacks or mangles an entry ({type(error).__name__}: {error}); "
            "export the run again from its run folder (mmcl.load_encoder(RUN) reads its checkpoint instead)"
        ) from None


def quickstart(output_dir: str = "runs", overrides: Sequence[str] | None = None) -> dict:
    """``mmcl quickstart``: pretrain on the bundled digits images, then evaluate beside a random-init encoder."""
    run = pretrain("quickstart", [f"train.output_dir={output_dir}", *(overrides or [])])
    pretrained, baseline = evaluate(run), evaluate(run, random_init=True)  # both kept in the run's eval.json
    lines = ["", f"{'':22}{'random init':>12}{'pretrained':>12}"]
    for task in ("knn", "linear"):
        if task in pretrained:
            lines.append(f"{task + ' top-1 (%)':22}{baseline[task]['top1']:12.2f}{pretrained[task]['top1']:12.2f}")
    print("\n".join(lines) + f"\nrun folder: {run.folder}")
    return {"pretrained": pretrained, "random_init": baseline, "run_dir": str(run.folder)}


__all__ = ["Run", "evaluate", "load_encoder", "pretrain"]
