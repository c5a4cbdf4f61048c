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
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mmcl import losses
from mmcl.contract import ModalityAdapter, SeededViews, TrainBatch, derived_seed
from mmcl.engine import checkpoint
from mmcl.engine.config import Config, build_adapter
from mmcl.engine.evaluate import validation_score
from mmcl.engine.gradcache import batch_dependent_layers, cached_step, split_inputs
from mmcl.engine.optim import build_optimizer, build_scheduler


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


def build_loss(config: Config) -> torch.nn.Module:
    options = dict(config.loss)
    return losses.build(options.pop("name"), **options)


def embeddings_for_loss(output: torch.Tensor, batch: TrainBatch) -> dict:
    """Split the encoder output of a view-major batch into the loss's arguments."""
    chunks = output.chunk(batch.n_views + int(batch.has_negatives))
    arguments = {"z_a": chunks[0], "z_b": chunks[1]}
    if batch.has_negatives:
        arguments["negatives"] = chunks[-1]
    return arguments


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


def default_run_dir(config: Config) -> Path:
    dataset = getattr(config.data, "dataset", None) or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.train.run_name or f"{config.modality}-{dataset}-{config.loss['name']}-{stamp}"
    return Path(config.train.output_dir) / name


def pretrain(config: Config, run_dir: str | Path | None = None, resume: bool = False) -> Path:
    """Pretrain the config's encoder; returns the run folder (config, metrics, checkpoints)."""
    train = config.train
    # Accelerate keeps its state per process; a second run in the same process (notebooks, tests, benchmarks)
    # may use another precision, so start from a fresh AcceleratorState (the process group is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    state = PartialState(cpu=train.cpu)  # starts the process group, so every rank agrees on the run folder
    run_dir = Path(broadcast_object_list([str(run_dir or default_run_dir(config))])[0])
    accelerator = Accelerator(
        cpu=train.cpu,
        mixed_precision=train.precision,
        gradient_accumulation_steps=train.grad_accumulation,
        log_with=_tensorboard(),
        project_dir=str(run_dir),
    )
    del state
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.yaml")
    torch.manual_seed(train.seed)

    adapter = build_adapter(config)
    encoder = adapter.build_encoder()
    loss_fn = build_loss(config).to(accelerator.device)
    if train.grad_accumulation > 1 and accelerator.is_main_process:
        note = "averages gradients; each micro-batch is contrasted on its own (no extra negatives)"
        print(f"note: grad_accumulation={train.grad_accumulation} {note}")
    if not train.drop_last and accelerator.num_processes > 1:
        # Accelerate would complete the last batch of each process with repeated items, which the loss
        # would then contrast with copies of themselves.
        raise ValueError("train.drop_last=false needs a single process; keep train.drop_last=true to train on several")
    data = SeededViews(adapter.train_dataset(), train.seed)
    sampler = EpochPermutation(len(data), train.seed, train.shuffle == "every_epoch")
    loader = DataLoader(
        data,
        batch_size=train.batch_size,
        sampler=sampler,
        drop_last=train.drop_last,
        collate_fn=adapter.collate_train,
        num_workers=train.num_workers,
    )
    if len(loader) == 0:
        raise ValueError(f"train.batch_size={train.batch_size} is larger than the dataset ({len(data)} items)")
    if train.grad_cache_chunk and batch_dependent_layers(encoder):
        raise ValueError(
            f"train.grad_cache_chunk needs an encoder without batch-dependent layers; this one has batch norm in "
            f"{batch_dependent_layers(encoder)[:3]}... (turn it off, e.g. model.head_batch_norm=false)"
        )
    if train.validate_every and adapter.validation is None:
        raise ValueError(f"train.validate_every: the {adapter.name} modality has no validation metric; unset it")
    optimizer = build_optimizer(encoder, config.optim)
    encoder, optimizer, loader = accelerator.prepare(encoder, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // train.grad_accumulation)
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, config.optim, total_steps)  # stepped once per optimiser step

    step = 0
    best: dict = {}  # the best validation so far: {"step", "metric", "value"}
    if resume:
        latest = checkpoint.latest_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        state = checkpoint.load_checkpoint(latest, map_location=accelerator.device)
        accelerator.unwrap_model(encoder).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loss_fn.load_state_dict(state["loss"])
        step = int(state["step"])
        best = state.get("best", best)
        if accelerator.is_main_process:
            print(f"resumed from {latest} at step {step}")
    if _tensorboard():
        accelerator.init_trackers("tensorboard")

    def save(at_step: int) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {
                "model": accelerator.unwrap_model(encoder).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loss": loss_fn.state_dict(),
                "step": at_step,
                "total_steps": total_steps,
                "best": best,
            }
            checkpoint.save_checkpoint(state, run_dir, at_step, keep=train.keep_checkpoints)
        accelerator.wait_for_everyone()

    def validate(at_step: int) -> dict[str, float]:
        """Score the encoder on the main process; keep ``checkpoints/best.pt`` when it improves."""
        scores: dict[str, float] = {}
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(encoder)
            value = validation_score(model, adapter, config, accelerator.device)
            model.train()
            metric = adapter.validation.name
            if not best or value > best["value"]:
                best.update(step=at_step, metric=metric, value=value)
                checkpoint.save_best({"model": model.state_dict(), **best}, run_dir)
            scores = {f"val_{metric}": value, "best_step": best["step"]}
        accelerator.wait_for_everyone()
        return scores

    metrics_file = (run_dir / "metrics.jsonl").open("a") if accelerator.is_main_process else None
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (accelerator.is_main_process and train.progress_bar),
        desc="pretrain",
    )
    encoder.train()
    loss_fn.train()
    stopped = False
    with _StopRequest() as stop:
        while step < total_steps and not stopped:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            sampler.epoch = data.epoch = epoch
            batches = (
                accelerator.skip_first_batches(loader, done_in_epoch * train.grad_accumulation)
                if done_in_epoch
                else loader
            )
            micro = 0
            for batch in batches:
                torch.manual_seed(derived_seed(train.seed, step, micro, accelerator.process_index))
                micro += 1
                with accelerator.accumulate(encoder):
                    labels = batch.labels if loss_fn.accepts_labels else None

                    def loss_of(output: torch.Tensor, batch: TrainBatch = batch, labels=labels) -> torch.Tensor:
                        return loss_fn(**embeddings_for_loss(output, batch), labels=labels)

                    if train.grad_cache_chunk:
                        chunks = split_inputs(batch.inputs, train.grad_cache_chunk)
                        loss, _ = cached_step(
                            encoder,
                            chunks,
                            loss_of,
                            backward=accelerator.backward,
                            no_sync=lambda: accelerator.no_sync(encoder),
                        )
                    else:
                        loss = loss_of(encoder(batch.inputs))
                        accelerator.backward(loss)
                    if accelerator.sync_gradients and train.grad_clip:
                        accelerator.clip_grad_norm_(encoder.parameters(), train.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                micro = 0
                loss_fn.set_progress(step / total_steps)
                validated = train.validate_every and (step % train.validate_every == 0 or step == total_steps)
                if validated or step % train.log_every == 0 or step == total_steps:
                    record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
                    record.update(_global_metrics(accelerator, {"loss": loss.detach(), **loss_fn.diagnostics}))
                    if validated:
                        record.update(validate(step))
                    accelerator.log(record, step=step)
                    if metrics_file:
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                    bar.set_postfix(
                        {k: f"{record[k]:.3g}" for k in ("loss", "pos_cos_mean", "neg_cos_mean", "tau") if k in record}
                    )
                bar.update(1)
                if _any(accelerator, stop.requested):
                    save(step)
                    stopped = True
                    break
                if train.checkpoint_every and step % train.checkpoint_every == 0 and step < total_steps:
                    save(step)
                if step >= total_steps:
                    break
    bar.close()
    if not stopped:
        save(step)
        export(accelerator, adapter, encoder, run_dir)
    if metrics_file:
        metrics_file.close()
    accelerator.end_training()
    if stopped:
        raise KeyboardInterrupt(
            f"stopped by signal at step {step}; resume with --resume (checkpoint saved in {run_dir})"
        )
    return run_dir


def export(accelerator: Accelerator, adapter: ModalityAdapter, encoder: torch.nn.Module, run_dir: Path) -> None:
    """``RUN/model``: the adapter's own format (e.g. ``save_pretrained``) of the best weights, else the last."""
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(encoder)
        best = checkpoint.best_path(run_dir)
        if best.is_file():
            model.load_state_dict(checkpoint.load_checkpoint(best, map_location=accelerator.device)["model"])
        folder = adapter.export(model, run_dir / "model")
        if folder is not None:
            print(f"exported {'best' if best.is_file() else 'final'} encoder to {folder}")
    accelerator.wait_for_everyone()


def _global_metrics(accelerator: Accelerator, values: dict) -> dict[str, float]:
    """Loss and diagnostics over all processes: counts (``n_*``) summed, the rest averaged.

    Each rank's loss is scaled so that the mean over ranks is the global batch's loss (see
    ``losses.core.EmbeddingLoss``), so the averaged loss is the global one.
    """
    names = sorted(values)
    local = torch.stack(
        [torch.as_tensor(values[k], dtype=torch.float32, device=accelerator.device).reshape(()) for k in names]
    )
    total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
    return {k: float(v) if k.startswith("n_") else float(v) / accelerator.num_processes for k, v in zip(names, total)}


def _any(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum") > 0)


def _tensorboard() -> str | None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"
