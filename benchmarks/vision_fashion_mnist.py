"""SimCLR on Fashion-MNIST with several losses side by side: kNN and linear-probe accuracy, images/s, peak memory.

Each loss runs in its own subprocess (so that the peak resident memory is that run's), through the same
engine and config as ``mmcl pretrain``, then ``mmcl evaluate``'s tasks on the full 60k/10k splits::

    python benchmarks/vision_fashion_mnist.py --root ../shared/data/images --steps 200 \\
        --losses nt_xent dcl dhel macl dystress --output /tmp/vision.json
    python benchmarks/vision_fashion_mnist.py --steps 20 --no-eval --output /tmp/speed.json   # images/s, memory

Budget (stated in the table): ResNet-18 with torchvision's standard stem (7x7/2 conv + max-pool, so a
28 px image becomes 7x7 after the stem; the CIFAR stem costs about 16x more here), batch 256 pairs,
AdamW lr 1e-3, ``--steps`` optimiser steps, the ``28`` view preset, temperature 0.5 (DHEL/DCL/MACL
as well; DySTreSS with its own range). kNN k = 200, T = 0.1; linear probe: the HCL protocol.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Each loss's options; the whole ``loss`` section is replaced, so no option of the config's loss leaks in.
LOSS_OPTIONS = {
    "nt_xent": {"temperature": 0.5},
    "dcl": {"temperature": 0.5},
    "dhel": {"temperature": 0.5},
    "macl": {"temperature": 0.5},
    "dystress": {},
}


def overrides(args: argparse.Namespace, loss: str, output_dir: str) -> list[str]:
    return [
        f"data.root={args.root}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        "model.backbone=resnet18",
        "model.backbone_options={cifar_stem: false}",
        "loss=" + json.dumps({"name": loss, **LOSS_OPTIONS.get(loss, {})}),
        "optim.name=adamw",
        "optim.lr=0.001",
        "optim.warmup_steps=20",
        f"train.output_dir={output_dir}",
        f"train.run_name={loss}",
        "train.progress_bar=false",
        "train.cpu=true",
        "train.log_every=20",
        "eval.tasks=[knn, linear]",
        f"train.seed={args.seed}",
    ]


def run_one(args: argparse.Namespace) -> dict:
    """In the child process: pretrain, evaluate, measure."""
    from mmcl.engine.config import load_config
    from mmcl.engine.evaluate import evaluate_run
    from mmcl.engine.trainer import pretrain

    config_file = Path(__file__).resolve().parent.parent / "configs" / "vision" / "fashion_mnist.yaml"
    config = load_config(config_file, overrides(args, args.loss, args.output_dir))
    started = time.perf_counter()
    run_dir = pretrain(config)
    train_seconds = time.perf_counter() - started
    peak_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = {
        "loss": args.loss,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(2 * args.batch_size * args.steps / train_seconds, 1),
        "peak_rss_mib_training": round(peak_train),
        "final_loss": metrics[-1]["loss"],
    }
    if not args.no_eval:
        results = evaluate_run(run_dir)
        row.update(
            knn_top1=results["knn"]["top1"], linear_top1=results["linear"]["top1"], eval_seconds=results["seconds"]
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data/images")
    parser.add_argument("--losses", nargs="+", default=list(LOSS_OPTIONS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="vision_fashion_mnist.json")
    parser.add_argument("--no-eval", action="store_true", help="training throughput and memory only")
    parser.add_argument("--loss", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loss:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for loss in args.losses:
            command = [
                sys.executable,
                __file__,
                "--loss",
                loss,
                "--output-dir",
                runs,
                "--root",
                args.root,
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--seed",
                str(args.seed),
                *(["--no-eval"] if args.no_eval else []),
            ]
            child = subprocess.run(command, capture_output=True, text=True)
            if child.returncode != 0:
                sys.exit(f"{loss}: the run failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
            out = child.stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2))
    print("\n| loss | kNN top-1 | linear top-1 | images/s | peak RSS (MiB) | final loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        accuracy = [f"{r[key]:.2f}" if key in r else "" for key in ("knn_top1", "linear_top1")]
        print(
            f"| `{r['loss']}` | {' | '.join(accuracy)} | {r['images_per_second']:.0f} | "
            f"{r['peak_rss_mib_training']} | {r['final_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
