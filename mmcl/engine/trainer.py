"""Contrastive pretraining on Hugging Face Accelerate: CPU, one or many GPUs, bf16/fp16.

The engine is modality-agnostic: it builds the adapter named by the config, runs its encoder once per
step on all views of the batch, and hands the loss plain embedding tensors. Under several processes the
loss gathers every process's embeddings with gradient (``mmcl.losses.gather_with_grad``; Accelerate's
``gather`` drops gradients), so each step contrasts the global batch of ``world_size * batch_size``
pairs. Gradient accumulation averages gradients over micro-batches but does not add negatives: each
micro-batch is contrasted on its own.

Reproducibility: the data order is a permutation seeded by ``(seed, epoch)`` (``train.shuffle=once``:
by ``seed`` alone, so every epoch sees the same batches, as GraphCL's TU code does), each item's views are
drawn with torch's RNG seeded by ``(seed, epoch, index)``, and each step reseeds torch's RNG by
``(seed, step, rank)`` (dropout). A resumed run therefore continues exactly as an uninterrupted one.

:func:`pretrain` applies the run-folder rules of :mod:`mmcl.runs.folder` (a new folder per run, resume only on
request and with checked overrides, a lock, ``run.json``) around a :class:`Trainer`, whose methods each do one
job: set-up, the step, its health checks, logging, checkpoints, validation and export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mmcl import losses
from mmcl.contract import ModalityAdapter, SeededViews, TrainBatch, derived_seed, seed_device
from mmcl.contract.export import is_export, update_manifest
from mmcl.engine.config import Config, build_adapter, config_from_dict
from mmcl.engine.evaluate import validation_name, validation_score
from mmcl.engine.gradcache import batch_dependent_layers, cached_step, split_inputs
from mmcl.engine.optim import build_optimizer, build_scheduler
from mmcl.runs import checkpoints, folder, tracking
from mmcl.runs.card import write_model_card
from mmcl.runs.files import export_folder, metrics_file
from mmcl.runs.record import RunRecord
from mmcl.tasks.metrics import effective_rank

log = logging.getLogger("mmcl")

#: Logging intervals in a row with collapsed embeddings before the run warns.
COLLAPSE_INTERVALS = 3


class EpochPermutation(Sampler):
    """A random permutation per epoch, seeded by (seed, epoch); with ``every_epoch=False`` one for all epochs."""

    def __init__(self, size: int, seed: int, every_epoch: bool = True) -> None:
        self.size, self.seed, self.epoch, self.every_epoch = size, seed, 0, every_epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        epoch = self.epoch if self.every_epoch else 0
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 1))
        return iter(torch.randperm(self.size, generator=generator).tolist())


class NonFiniteError(ValueError):
    """The embeddings, loss or gradients of a step are not finite (``train.on_nonfinite=stop``)."""


class _NonFiniteEmbeddings(Exception):
    """Raised inside a step when the encoder's output is not finite."""


def embeddings_for_loss(output: torch.Tensor, batch: TrainBatch) -> dict:
    """Split the encoder output of a view-major batch into the loss's arguments: every view (and the hard
    negatives, and multi-crop's number of global views where the batch has them)."""
    chunks = output.chunk(batch.n_views + int(batch.has_negatives))
    arguments = {"views": chunks[: batch.n_views]}
    if batch.has_negatives:
        arguments["negatives"] = chunks[-1]
    if batch.global_views is not None:
        arguments["global_views"] = batch.global_views
    return arguments


def default_run_name(config: Config) -> str:
    dataset = getattr(config.data, "dataset", None) or "data"
    return f"{config.modality}-{dataset}-{config.loss['name']}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts the session as Ctrl-C does (KeyboardInterrupt), so that a stop during set-up records the
    session as stopped and exits with 130 instead of dying with 143 mid-write; the training loop turns both
    signals into a stop after the current step (:class:`_StopRequest`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(
            f"stopped by {signal.Signals(signum).name} outside the training steps; the run folder keeps what was saved "
            "(resume with --resume; a run that saved no checkpoint starts again with the same command)"
        )

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked after each step, so the run saves before exiting."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the run folder around a training session


@dataclass(frozen=True)
class Trained:
    """A finished training session: its run folder and, in a single process, the encoder holding the weights an
    evaluation of the folder loads (the best on validation, else the final ones: ``checkpoint``) with its adapter,
    so that an evaluation right after training reuses them (None under several processes: DDP's hooks would keep
    the process group alive)."""

    folder: Path
    encoder: torch.nn.Module | None = None
    adapter: ModalityAdapter | None = None
    checkpoint: Path | None = None
    stopped_early: int | None = None  # the step where ``on_validation`` ended the run (a pruned trial)


def pretrain(
    config: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    allow_world_size_change: bool = False,
) -> Path:
    """Pretrain the config's encoder in a run folder (:mod:`mmcl.runs.folder`); returns the folder.

    Args:
        config: the validated config.
        run_dir: the folder; None: ``train.output_dir/train.run_name`` (or a new timestamped name). Without
            ``resume`` it must not hold a run yet.
        resume: continue the folder from its newest readable checkpoint; ``config`` may differ from the saved one
            only in :data:`mmcl.runs.folder.RESUMABLE` keys.
        allow_world_size_change: accept resuming with another number of processes (it changes the global batch).
    """
    return train(config, run_dir, resume, allow_world_size_change).folder


def train(
    config: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    allow_world_size_change: bool = False,
    on_validation: Callable[[int, float], bool] | None = None,
) -> Trained:
    """:func:`pretrain`, returning the trained encoder too (see :class:`Trained`).

    ``on_validation(step, score)`` is called with each validation score (``train.validate_every``); when it returns
    True the run ends after that step, as if it had reached its last one (a study's pruner stops a tuning trial).
    """
    tracking.check_loggers(config.train.loggers)  # before anything is written
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    # Accelerate keeps its state per process; a second run in the same process (notebooks, tests, studies) may
    # use another precision, so start from a fresh AcceleratorState (the process group is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    state = PartialState(cpu=config.train.cpu)  # starts the process group, so every rank agrees on the run folder
    with process_group_released_last(), _sigterm_interrupts():
        return _train_in_run_folder(config, state, run_dir, resume, allow_world_size_change, on_validation)


def _train_in_run_folder(
    config: Config,
    state: PartialState,
    run_dir: str | Path | None,
    resume: bool,
    allow_world_size_change: bool,
    on_validation: Callable[[int, float], bool] | None,
) -> Trained:
    """:func:`train` once the process group is up: check everything the config and data decide before any folder
    exists, agree on the run folder, train, record the session."""
    if resume:  # a refused change is the first thing to say, before the data are read
        _on_main(state, lambda: folder.check_resume_request(config.to_dict(), run_dir))
    trainer = Trainer(config, state, on_validation)
    trainer.prepare()
    with contextlib.ExitStack() as held:
        run_dir, start = _agree_on_run_folder(config, state, run_dir, resume, held, allow_world_size_change)
        record = RunRecord(run_dir) if state.is_main_process else None
        try:
            trainer.set_up(run_dir, record, start)
            trainer.fit()
        except KeyboardInterrupt:
            if record:
                record.end_session("stopped", at_step=trainer.step)
            raise
        except Exception as error:
            if record:
                record.end_session("failed", error=f"{type(error).__name__}: {error}", at_step=trainer.step)
            raise
        if record:
            early = {"stopped_early": trainer.stopped_early} if trainer.stopped_early else {}
            record.end_session("finished", at_step=trainer.step, **early)
            if is_export(export_folder(run_dir)):
                write_model_card(run_dir, trainer.adapter)  # after the session ended: with its wall time
        return trainer.trained()


def _agree_on_run_folder(
    config: Config,
    state: PartialState,
    run_dir: str | Path | None,
    resume: bool,
    held: contextlib.ExitStack,
    allow_world_size_change: bool,
) -> tuple[Path, dict | None]:
    """The main process opens the run folder (:func:`mmcl.runs.folder.open_run_folder`), every rank learns it."""
    opened = _on_main(state, lambda: folder.open_run_folder(
        config.to_dict(), run_dir, resume, held, default_run_name(config), validate=config_from_dict,
        world_size=state.num_processes, allow_world_size_change=allow_world_size_change,
    ))  # fmt: skip
    return Path(opened[0]), opened[1]


def _on_main(state: PartialState, job: Callable[[], Any]) -> Any:
    """``job()`` on the main process, its result (or its error, raised again) on every rank."""
    outcome = [None, None]  # the result, an error message
    if state.is_main_process:
        try:
            outcome[0] = job()
        except (ValueError, OSError) as error:
            outcome[1] = f"{type(error).__name__}: {error}"
    outcome = broadcast_object_list(outcome)
    if outcome[1] is not None:
        kind, message = outcome[1].split(": ", 1)
        raise {"FileNotFoundError": FileNotFoundError, "OSError": OSError}.get(kind, ValueError)(message)
    return outcome[0]


# ---------------------------------------------------------------- the training session


class Trainer:
    """One training session: :meth:`prepare` (before any run folder exists), :meth:`set_up` in the run folder,
    then :meth:`fit`."""

    def __init__(
        self, config: Config, state: PartialState, on_validation: Callable[[int, float], bool] | None = None
    ) -> None:
        self.config, self.train, self.state, self.on_validation = config, config.train, state, on_validation
        self.stopped_early: int | None = None  # the step where on_validation ended the run
        self.step, self.best = 0, {}
        self.collapsed_intervals, self.skipped_steps, self.step_skipped = 0, 0, False

    # ------------------------------------------------------------ set-up

    def prepare(self) -> None:
        """Everything the config and the data decide, checked before a run folder exists: the device, the data,
        the encoder, the losses, how they fit together, and the batch against the dataset."""
        train, device = self.train, self.state.device
        if train.precision == "fp16" and device.type == "cpu":
            raise ValueError("train.precision=fp16 needs a GPU and none is in use; use train.precision=bf16 or no")
        if not train.drop_last and self.state.num_processes > 1:
            # Accelerate would complete the last batch of each process with repeated items, which the loss
            # would then contrast with copies of themselves.
            raise ValueError(
                "train.drop_last=false needs a single process; keep train.drop_last=true to train on several"
            )
        self.adapter = build_adapter(self.config)
        dataset = self.adapter.train_dataset()  # data errors first: they are cheap to find
        self.data = SeededViews(dataset, train.seed, seeded=self.adapter.items_are_random)
        torch.manual_seed(train.seed)
        self.encoder = self.adapter.build_encoder()
        self.loss_fn = self.config.build_loss().to(device)
        self.monitors = self._monitor_losses(device)
        self._check_components(self.encoder)
        self.sampler = EpochPermutation(len(self.data), train.seed, train.shuffle == "every_epoch")
        self.loader = DataLoader(self.data, batch_size=train.batch_size, sampler=self.sampler,
                                 drop_last=train.drop_last, collate_fn=self.adapter.collate_train,
                                 num_workers=train.num_workers)  # fmt: skip
        if len(self.loader) == 0:
            raise ValueError(f"train.batch_size={train.batch_size} is larger than the dataset ({len(self.data)} items)")

    def set_up(self, run_dir: Path, record: RunRecord | None, start: dict | None) -> None:
        """The session in its run folder: the accelerator and its trackers, the optimiser and schedule, the
        checkpoint to resume from (``start``; None: a new run)."""
        train, self.run_dir, self.record = self.train, run_dir, record
        self.accelerator = accelerator = Accelerator(
            cpu=train.cpu,
            mixed_precision=train.precision,
            gradient_accumulation_steps=train.grad_accumulation,
            log_with=tracking.log_with(train.loggers, run_dir),
            project_dir=str(run_dir),
        )
        optimizer = build_optimizer(self.encoder, self.config.optim, self.loss_fn)
        self.encoder, self.optimizer, self.loader = accelerator.prepare(self.encoder, optimizer, self.loader)
        # Accelerate steps the optimiser at the end of every epoch too (a last group of fewer micro-batches)
        self.steps_per_epoch = math.ceil(len(self.loader) / train.grad_accumulation)
        self.total_steps = train.max_steps or train.epochs * self.steps_per_epoch
        warmup = self.config.optim.warmup_steps
        if warmup is not None and warmup >= self.total_steps:
            raise ValueError(
                f"optim.warmup_steps={warmup} is not shorter than the run ({self.total_steps} steps): the learning "
                "rate would never reach optim.lr; lower optim.warmup_steps, or set optim.warmup_ratio instead (a "
                "fraction of the run)"
            )
        self.scheduler = build_scheduler(self.optimizer, self.config.optim, self.total_steps)
        if start is not None:
            self._restore(start)
        self._record_session()
        tracking.start(accelerator, self.config.to_dict(), run_dir)

    def _check_components(self, encoder: torch.nn.Module) -> None:
        train, adapter = self.train, self.adapter
        if train.grad_cache_chunk and batch_dependent_layers(encoder):
            raise ValueError(
                f"train.grad_cache_chunk needs an encoder without batch-dependent layers; this one has batch norm in "
                f"{batch_dependent_layers(encoder)[:3]}... (turn it off, e.g. model.head_batch_norm=false)"
            )
        self._check_views(adapter.n_views)
        if train.validate_every and adapter.validation is None and self.config.eval.validation_metric is None:
            raise ValueError(
                f"train.validate_every: the {adapter.name} modality has no validation of its own; name one with "
                "eval.validation_metric (e.g. knn.top1: kNN on a hold-out of the training split), or unset it"
            )
        self.uses_labels = bool(self.loss_fn.accepts_labels and adapter.has_labels)
        if self.uses_labels and adapter.evaluates_pretraining_items and not train.allow_label_leak:
            raise ValueError(
                f"loss.name={self.config.loss['name']} reads the class labels of the pretraining data, and the "
                f"{adapter.name} modality's evaluation scores those same items (e.g. 10-fold cross-validation over "
                "the whole dataset): the test folds' labels would shape the encoder. Use an unsupervised loss, or set "
                "train.allow_label_leak=true to accept it knowingly (the scores are then not comparable to "
                "unsupervised ones)"
            )

    def _check_views(self, n_views: int) -> None:
        """Every loss of the run (trained and monitored) takes the batch's views."""
        named = [(f"loss.name={self.config.loss['name']}", self.loss_fn)]
        named += [(f"train.monitor_losses: {name}", loss) for name, loss in self.monitors.items()]
        for what, loss in named:
            limit = getattr(loss, "max_views", None)
            if limit is not None and n_views > limit:
                takes_more = ", ".join(_multi_view_losses())
                raise ValueError(
                    f"data: {n_views} views per instance, and {what} takes {limit}: it is defined for pairs. Use "
                    f"{limit} views (data.n_views, data.views), or a loss that takes more: {takes_more}"
                )

    def _monitor_losses(self, device: torch.device) -> dict[str, torch.nn.Module]:
        """``train.monitor_losses``: other losses of the core, evaluated without gradient on each logged batch."""
        monitors = {}
        for section in self.train.monitor_losses:
            options = dict(section)
            name = options.pop("name")
            needs_labels = "labels" in losses.info(name).inputs and "optional" not in losses.info(name).inputs
            if needs_labels and not self.adapter.has_labels:
                raise ValueError(f"train.monitor_losses: {name} needs class labels, and the pretraining data has none")
            monitors[name] = losses.build(name, **options).to(device)
        return monitors

    def _restore(self, start: dict) -> None:
        """Continue from the checkpoint :func:`mmcl.runs.folder.open_run_folder` checked (its world size too)."""
        path = Path(start["path"])
        state = checkpoints.load_checkpoint(path)  # to the CPU: every rank, any device
        checkpoints.load_model_state(self.accelerator.unwrap_model(self.encoder), state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss"])
        self.step, self.best = int(state["step"]), state.get("best", {})
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def _record_session(self) -> None:
        if self.record is None:
            return
        labels = None
        if self.uses_labels:
            dataset = getattr(self.config.data, "dataset", "the data")
            labels = f"loss.name={self.config.loss['name']} reads the class labels of data.dataset={dataset}"
            log.info("supervised: %s", labels)
        self.record.update_session(
            device=str(self.accelerator.device),
            world_size=self.accelerator.num_processes,
            threads=torch.get_num_threads(),
            precision=self.train.precision,
            total_steps=self.total_steps,
            warmup_steps=self.config.optim.warmup_for(self.total_steps),
            labels=labels,
        )

    # ------------------------------------------------------------ the loop

    def fit(self) -> None:
        accelerator, train = self.accelerator, self.train
        self.metrics_file = metrics_file(self.run_dir).open("a") if accelerator.is_main_process else None
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc="pretrain",
                        disable=not (accelerator.is_main_process and train.progress_bar))  # fmt: skip
        self.encoder.train()
        self.loss_fn.train()
        stopped = False
        try:
            with _StopRequest() as stop:
                while self.step < self.total_steps and not stopped and self.stopped_early is None:
                    stopped = self._run_epoch(stop)
        finally:
            self.bar.close()
            if self.metrics_file:
                self.metrics_file.close()
        if stopped:
            _end_training(accelerator)
            raise KeyboardInterrupt(
                f"stopped by signal at step {self.step}; resume with --resume (checkpoint saved in {self.run_dir})"
            )
        self._save(final=True)
        self._export()
        _end_training(accelerator)

    def _run_epoch(self, stop: _StopRequest) -> bool:
        """Steps until the epoch ends, the run ends, or a stop is requested (then saved: returns True)."""
        epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
        self.sampler.epoch = self.data.epoch = epoch
        accumulation = self.train.grad_accumulation
        batches = (
            self.accelerator.skip_first_batches(self.loader, done_in_epoch * accumulation)
            if done_in_epoch
            else self.loader
        )
        micro = 0
        for batch in batches:
            seed = derived_seed(self.train.seed, self.step, micro, self.accelerator.process_index)
            seed_device(seed, self.accelerator.device)
            micro += 1
            loss, embeddings = self._train_step(batch)
            if not self.accelerator.sync_gradients:
                continue
            micro = 0
            self.scheduler.step()
            self.step += 1
            self.loss_fn.set_progress(self.step / self.total_steps)
            self._log(epoch, loss, embeddings, batch)
            self.step_skipped = False
            self.bar.update(1)
            if _any(self.accelerator, stop.requested):
                self._save()
                return True
            if (
                self.train.checkpoint_every
                and self.step % self.train.checkpoint_every == 0
                and self.step < self.total_steps
            ):
                self._save()
            if self.step >= self.total_steps or self.stopped_early is not None:
                break
        return False

    def _train_step(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward, loss, backward, health checks and optimiser step of one micro-batch; returns the detached loss
        and embeddings (None for a skipped step)."""
        accelerator, train = self.accelerator, self.train
        batch = self.adapter.augment_batch(batch)  # views drawn on the device, seeded by (seed, step, rank)
        labels = batch.labels if self.uses_labels else None

        def loss_of(output: torch.Tensor) -> torch.Tensor:
            if _any(accelerator, not bool(torch.isfinite(output.detach()).all())):
                raise _NonFiniteEmbeddings  # before the loss, which refuses non-finite inputs
            return self.loss_fn(**embeddings_for_loss(output, batch), labels=labels)

        with accelerator.accumulate(self.encoder):
            try:
                if train.grad_cache_chunk:
                    chunks = split_inputs(batch.inputs, train.grad_cache_chunk)
                    no_sync = lambda: accelerator.no_sync(self.encoder)  # noqa: E731
                    loss, embeddings = cached_step(
                        self.encoder, chunks, loss_of, backward=accelerator.backward, no_sync=no_sync
                    )
                else:
                    embeddings = self.encoder(batch.inputs)
                    loss = loss_of(embeddings)
                    accelerator.backward(loss)
            except _NonFiniteEmbeddings:
                self._non_finite("the embeddings are")
                self.optimizer.zero_grad()
                return torch.tensor(math.nan), None
            if accelerator.sync_gradients:
                _average_loss_gradients(accelerator, self.loss_fn)
                if self._healthy(loss):
                    self.optimizer.step()
                    self.loss_fn.constrain_()  # open_clip's clamp of logit_scale after the step
            self.optimizer.zero_grad()
        return loss.detach(), embeddings.detach()

    def _healthy(self, loss: torch.Tensor) -> bool:
        """Whether the step may update the weights: its loss and gradient norm are finite (under fp16 the loss
        scaler handles non-finite gradients itself). Clips the gradients with ``train.grad_clip``."""
        parameters = [*self.encoder.parameters(), *self.loss_fn.parameters()]  # the loss's: a learnable temperature
        norm = self.accelerator.clip_grad_norm_(parameters, self.train.grad_clip or math.inf)
        bad_loss = _any(self.accelerator, not bool(torch.isfinite(loss.detach()).all()))
        bad_grad = self.train.precision != "fp16" and not bool(torch.isfinite(norm).all())
        if bad_loss or bad_grad:
            self._non_finite("the loss is" if bad_loss else "the gradients are")
            return False
        return True

    def _non_finite(self, what: str) -> None:
        """Stop the run with its last good checkpoint (``train.on_nonfinite=stop``), or record a skipped step.
        ``what``: the subject and verb, e.g. "the loss is"."""
        step = self.step + 1
        if self.train.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.step_skipped = True
            if self.record:
                self.record.warn(f"step {step}: {what} not finite; the step was skipped (train.on_nonfinite=skip)")
            return
        latest = checkpoints.latest_checkpoint(self.run_dir)
        raise NonFiniteError(
            f"step {step}: {what} not finite; the run stops and keeps its last good checkpoint "
            f"({latest.name if latest else 'none yet'}). Lower optim.lr, set train.grad_clip, or set "
            "train.on_nonfinite=skip to skip such steps"
        )

    # ------------------------------------------------------------ logging and health

    def _log(self, epoch: int, loss: torch.Tensor, embeddings: torch.Tensor | None, batch: TrainBatch) -> None:
        train = self.train
        validated = train.validate_every and (self.step % train.validate_every == 0 or self.step == self.total_steps)
        if not (validated or self.step % train.log_every == 0 or self.step == self.total_steps):
            return
        record = {"step": self.step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0]}
        values = {"loss": loss}
        if embeddings is not None:  # the loss ran on this step's embeddings: its diagnostics are this step's
            values.update(self.loss_fn.diagnostics, embedding_rank=_embedding_rank(embeddings))
            values.update(self._monitored(embeddings, batch))
        record.update(_global_metrics(self.accelerator, values))
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        if self.step_skipped:
            record["skipped"] = True
        if validated:
            record.update(self._validate())
        self.accelerator.log(record, step=self.step)
        if self.metrics_file:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        self._watch_collapse(record)
        keys = ("loss", "pos_cos_mean", "neg_cos_mean", "tau")
        self.bar.set_postfix({k: f"{record[k]:.3g}" for k in keys if k in record})

    @torch.no_grad()
    def _monitored(self, embeddings: torch.Tensor, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """``monitor/<name>``: each monitored loss on this step's embeddings (without gradient)."""
        values = {}
        for name, monitor in self.monitors.items():
            labels = batch.labels.to(embeddings.device) if monitor.accepts_labels and batch.labels is not None else None
            values[f"monitor/{name}"] = monitor(**embeddings_for_loss(embeddings, batch), labels=labels)
        return values

    def _watch_collapse(self, record: dict) -> None:
        """Warn once when the embeddings have collapsed for :data:`COLLAPSE_INTERVALS` logging intervals in a row."""
        cosines_near_one = record.get("pos_cos_mean", 0) > 0.99 and record.get("neg_cos_mean", 0) > 0.99
        collapsed = cosines_near_one or record.get("embedding_rank", math.inf) < 1.5
        self.collapsed_intervals = self.collapsed_intervals + 1 if collapsed else 0
        if self.collapsed_intervals == COLLAPSE_INTERVALS and self.record:
            seen = {key: record.get(key, math.nan) for key in ("pos_cos_mean", "neg_cos_mean", "embedding_rank")}
            self.record.warn(
                f"the embeddings look collapsed at step {self.step} (positive cosine {seen['pos_cos_mean']:.3f}, "
                f"negative cosine {seen['neg_cos_mean']:.3f}, effective rank {seen['embedding_rank']:.2f} for "
                f"{COLLAPSE_INTERVALS} logging intervals); check optim.lr and the loss's temperature"
            )

    # ------------------------------------------------------------ checkpoints, validation, export

    def _save(self, final: bool = False) -> None:
        """A checkpoint of this step; the run's last one without the optimiser and scheduler states when
        ``train.save_optimizer_state`` is false (checkpoints a stopped run resumes from always keep them)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            resumable = not final or self.train.save_optimizer_state
            state = {
                "model": accelerator.unwrap_model(self.encoder).state_dict(),
                **(
                    {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
                    if resumable
                    else {}
                ),  # fmt: skip
                "loss": self.loss_fn.state_dict(),
                "step": self.step,
                "total_steps": self.total_steps,
                "world_size": accelerator.num_processes,
                "skipped_steps": self.skipped_steps,
                "best": self.best,
            }
            checkpoints.save_checkpoint(state, self.run_dir, self.step, keep=self.train.keep_checkpoints)
        accelerator.wait_for_everyone()

    def _validate(self) -> dict[str, float]:
        """Score the encoder on the main process; keep ``checkpoints/best.pt`` when it improves; hand the score to
        ``on_validation``, whose True ends the run after this step (a pruned tuning trial)."""
        scores: dict[str, float] = {}
        stop = False
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.encoder)
            value = validation_score(model, self.adapter, self.config, self.accelerator.device)
            metric = validation_name(self.adapter, self.config)
            model.train()
            if not self.best or value > self.best["value"]:
                self.best.update(step=self.step, metric=metric, value=value)
                checkpoints.save_best({"model": model.state_dict(), **self.best}, self.run_dir)
            scores = {f"val_{metric}": value, "best_step": self.best["step"]}
            stop = self.on_validation is not None and self.on_validation(self.step, value)
        if _any(self.accelerator, self.accelerator.is_main_process and stop):
            self.stopped_early = self.step  # the callback's call (a tuning pruner): the run ends here
        return scores

    def _export(self) -> None:
        """``RUN/model``: the adapter's own format (e.g. sentence-transformers) of the best weights, else the last."""
        export(self.accelerator, self.adapter, self.encoder, self.run_dir, self.step)

    def trained(self) -> Trained:
        """The session's outcome; after :meth:`fit` the encoder holds the exported weights (the best, else the
        final ones), without mixed precision's forward wrapper, as an evaluation loads them."""
        if self.accelerator.num_processes > 1:
            return Trained(self.run_dir, stopped_early=self.stopped_early)
        best = checkpoints.best_path(self.run_dir)
        weights = best if best.is_file() else checkpoints.checkpoint_path(self.run_dir, self.step)
        encoder = self.accelerator.unwrap_model(self.encoder, keep_fp32_wrapper=False)
        return Trained(self.run_dir, encoder, self.adapter, weights, self.stopped_early)


def export(
    accelerator: Accelerator, adapter: ModalityAdapter, encoder: torch.nn.Module, run_dir: Path, step: int
) -> None:
    """``RUN/model``: the adapter's own format (e.g. sentence-transformers) of the best weights, else those of the
    final ``step``; its manifest records which."""
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(encoder)
        best = checkpoints.best_path(run_dir)
        weights = {"checkpoint": "final", "step": step}
        if best.is_file():
            state = checkpoints.load_checkpoint(best)
            checkpoints.load_model_state(model, state, best)
            weights = {"checkpoint": "best", "step": state["step"], "metric": state["metric"], "value": state["value"]}
        exported = adapter.export(model, export_folder(run_dir))
        if exported is not None:
            if is_export(exported):  # a plug-in's export may predate the manifest: then it gets no card either
                update_manifest(exported, run={"name": run_dir.name, **weights})
            log.info("exported the %s encoder to %s", weights["checkpoint"], exported)
    accelerator.wait_for_everyone()


def _multi_view_losses() -> list[str]:
    """The registered losses that take any number of views with their default options."""
    names = []
    for name in losses.available():
        try:
            if losses.build(name).max_views is None:
                names.append(name)
        except (TypeError, ValueError):  # a loss with required options: not listed
            pass
    return names


def _end_training(accelerator: Accelerator) -> None:
    """Accelerate's ``end_training`` with the processes meeting before the process group is destroyed, so that no
    rank leaves while another still flushes its trackers."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()
    accelerator.state.destroy_process_group()


@contextlib.contextmanager
def process_group_released_last() -> Iterator[None]:
    """Keep the default process group's Python handle until the block's objects are freed, then drop it.

    torch 2.13's gloo group joins its worker threads when it is destroyed. A worker that has just finished a
    collective still holds the collective's tensors (and a barrier holds all earlier collectives), and releasing
    a tensor that Python created takes the GIL. When DDP's reducer is the group's last owner, the group is
    destroyed as the trainer is freed, with the GIL held, and the join waits forever for a worker that waits for
    the GIL (2 of 24 two-process runs hung so on a busy 2-core machine; ``tests/teardown_worker.py`` without this
    hung within its first 6 runs in 3 tries of 3). Torch's Python handle of a process group releases the GIL
    before destroying it, so that handle, held here, must be the last owner: the block's frames are freed before
    it, on return or, when the block raises, by clearing the traceback's frames (only under several processes:
    a single process keeps its traceback's locals for post-mortem debugging).
    """
    group = torch.distributed.group.WORLD if torch.distributed.is_initialized() else None
    try:
        yield
    except BaseException as error:
        if group is not None:
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        del group


def _embedding_rank(embeddings: torch.Tensor) -> float:
    """Effective rank (RankMe) of the step's local loss embeddings: near 1 when they have collapsed."""
    value = effective_rank(embeddings.float().cpu(), max_samples=None)
    return 1.0 if math.isnan(value) else value


def _global_metrics(accelerator: Accelerator, values: dict) -> dict[str, float]:
    """Loss and diagnostics over all processes: counts (``n_*``) summed, the rest averaged.

    Each rank's loss is scaled so that the mean over ranks is the global batch's loss (see
    ``mmcl.losses.core.EmbeddingLoss``), so the averaged loss is the global one.
    """
    names = sorted(values)
    local = torch.stack(
        [torch.as_tensor(values[k], dtype=torch.float32, device=accelerator.device).reshape(()) for k in names]
    )
    total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
    return {k: float(v) if k.startswith("n_") else float(v) / accelerator.num_processes for k, v in zip(names, total)}


def _average_loss_gradients(accelerator: Accelerator, loss_fn: torch.nn.Module) -> None:
    """Average the gradients of the loss's own parameters (a learnable temperature) over processes, as DDP averages
    the encoder's: each rank's loss is its share of the global batch's (their mean is the global loss), so the mean
    of the ranks' gradients is the global loss's gradient."""
    if accelerator.num_processes == 1:
        return
    for parameter in loss_fn.parameters():
        if parameter.grad is not None:
            parameter.grad.copy_(accelerator.reduce(parameter.grad, reduction="mean"))


def _any(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum") > 0)
