"""GraphCL's unsupervised TU benchmark for every pair loss of the core, beside the published GraphCL numbers.

Setting (You et al. 2020, arXiv:2010.13902; Shen-Lab/GraphCL ``unsupervised_TU/go.sh``): the configs in
``configs/graph/`` (GIN 3x32, sum pooling of every layer, projection head for the loss only; the graph
against a node-dropped or subgraph view; Adam lr 0.01, batch 128, 20 epochs), one run per seed, each
evaluated after its final epoch with GraphCL's SVC protocol (10-fold stratified cross-validation, inner
5-fold grid over C; the outer split seeded by the run's seed, as the reference draws a fresh split per
run). A cell is the mean +- population standard deviation over seeds of the runs' 10-fold accuracies,
as GraphCL reports over its 5 seeds. Temperature-based losses use GraphCL's tau = 0.2; ``dystress`` and
``kcl`` keep their defaults (a temperature range ending at 0.2; a kernel).

Every finished run is appended to a JSON-lines file, so an interrupted benchmark resumes where it
stopped; ``--table`` only prints the Markdown table of what the file holds::

    python benchmarks/graph_tu.py --root ../shared/data/tu --datasets MUTAG PROTEINS NCI1 \
        --losses graphcl --seeds 0 1 2 3 4 --threads 1
    python benchmarks/graph_tu.py --table
    python benchmarks/graph_tu.py --ablation NCI1 --override eval.graph_classification.search=false \
        --results benchmarks/results/graph_tu_ablation.jsonl    # each option's effect, paired by seed
    python benchmarks/graph_tu.py --ablation PROTEINS --losses graphcl \
        --results benchmarks/results/graph_tu_ablation.jsonl benchmarks/results/graph_tu.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOSSES = ("graphcl", "nt_xent", "dcl", "hcl", "macl", "dystress", "dhel", "kcl")
DATASETS = ("MUTAG", "PROTEINS", "NCI1")
#: GraphCL, unsupervised TU, mean +- std over 5 seeds (evaluation spec 9.3: third-party quotes of the paper's table).
PUBLISHED = {"MUTAG": (86.80, 1.34), "PROTEINS": (74.39, 0.45), "NCI1": (77.87, 0.41)}
TEMPERATURE_LOSSES = {"graphcl", "nt_xent", "dcl", "hcl", "macl", "dhel"}
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "graph_tu.jsonl"


def run_one(dataset: str, loss: str, seed: int, root: str, extra: list[str]) -> dict:
    """Pretrain one encoder and evaluate it; returns the run's record (run folder deleted afterwards)."""
    from mmcl.engine.config import load_config
    from mmcl.engine.evaluate import evaluate_run
    from mmcl.engine.trainer import pretrain

    work = Path(tempfile.mkdtemp(prefix="mmcl-graph-"))
    section = f"{{name: {loss}, temperature: 0.2}}" if loss in TEMPERATURE_LOSSES else f"{{name: {loss}}}"
    overrides = [f"data.root={root}", f"loss={section}", f"train.seed={seed}", f"eval.seed={seed}",
                 "train.progress_bar=false", "train.log_every=1000"]  # fmt: skip
    config = load_config(REPO / "configs" / "graph" / f"{dataset.lower()}.yaml", [*overrides, *extra])
    try:
        started = time.perf_counter()
        run_dir = pretrain(config, work / "run")
        pretrain_s = time.perf_counter() - started
        results = evaluate_run(run_dir)
        task = results["graph_classification"]
        return {
            "dataset": dataset, "loss": loss, "seed": seed, "accuracy": task["accuracy"],
            "std_over_folds": task["std_over_folds"], "C": task["per_seed"][0]["C"],
            "pretrain_s": round(pretrain_s, 2), "eval_s": results["seconds"],
            "wall_s": round(time.perf_counter() - started, 2), "loss_options": config.loss, "overrides": extra,
        }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(records: list[dict], overrides: list[str] | None = None) -> str:
    """Markdown: one row per loss, one column per dataset (mean +- std over seeds, seeds, seconds per run).

    Only runs made with exactly ``overrides`` (default: none, the plain setting) are counted.
    """
    records = [r for r in records if r.get("overrides", []) == list(overrides or [])]
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in records)]
    losses = [name for name in LOSSES if any(r["loss"] == name for r in records)]
    head = "| loss | " + " | ".join(f"{d} acc. (%) | {d} s/run" for d in datasets) + " |"
    lines = [head, "|---|" + "---|---|" * len(datasets)]
    published = (f"{PUBLISHED[d][0]:.2f} ± {PUBLISHED[d][1]:.2f} | " for d in datasets)
    lines.append("| GraphCL (published) | " + " | ".join(published) + " |")
    for loss in losses:
        cells = []
        for d in datasets:
            runs = [r for r in records if r["loss"] == loss and r["dataset"] == d]
            if not runs:
                cells.append("— | —")
                continue
            acc = np.array([r["accuracy"] for r in runs])
            seconds = np.mean([r["wall_s"] for r in runs])
            cells.append(f"{acc.mean():.2f} ± {acc.std():.2f} (n={len(runs)}) | {seconds:.0f}")
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(
    records: list[dict], dataset: str, base: list[str] | None = None, losses: tuple[str, ...] = LOSSES
) -> str:
    """Markdown: one row per loss and set of extra overrides on ``dataset``, beside the runs made with ``base``.

    Rows are the runs whose overrides extend ``base``; Δ is the mean over the shared seeds of the
    difference to the base run of the same loss and seed (same outer split).
    """
    base = list(base or [])
    groups: dict[tuple[str, tuple[str, ...]], dict[int, float]] = {}
    for r in records:
        overrides = r.get("overrides", [])
        if r["dataset"] == dataset and r["loss"] in losses and overrides[: len(base)] == base:
            groups.setdefault((r["loss"], tuple(overrides[len(base) :])), {})[r["seed"]] = r["accuracy"]
    seeds = sorted({seed for runs in groups.values() for seed in runs})
    lines = [f"| loss | extra overrides | {' | '.join(f'seed {s}' for s in seeds)} | mean ± std | Δ |",
             "|---|---|" + "---|" * (len(seeds) + 2)]  # fmt: skip
    for (loss, extra), runs in sorted(groups.items(), key=lambda item: (item[0][0], len(item[0][1]), item[0][1])):
        acc = np.array(list(runs.values()))
        reference = groups.get((loss, ()), {})
        shared = [s for s in runs if s in reference]
        delta = f"{np.mean([runs[s] - reference[s] for s in shared]):+.2f}" if extra and shared else ""
        cells = " | ".join(f"{runs[s]:.2f}" if s in runs else "" for s in seeds)
        options = " ".join(f"`{o}`" for o in extra) or "(none)"
        lines.append(f"| `{loss}` | {options} | {cells} | {acc.mean():.2f} ± {acc.std():.2f} | {delta} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data/tu", help="folder holding <DATASET>/raw/")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--results", type=Path, nargs="+", default=[DEFAULT_RESULTS], help="JSON-lines files: runs "
                        "are appended to the first (resumable); the tables read them all")  # fmt: skip
    parser.add_argument("--override", action="append", default=[], help="extra config override (recorded; the table "
                        "counts only the runs made with exactly these overrides)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--table", action="store_true", help="only print the table of the results file")
    parser.add_argument("--ablation", choices=DATASETS, help="only print the ablation table of one dataset: the runs "
                        "whose overrides extend --override, against those made with exactly --override")  # fmt: skip
    args = parser.parse_args(argv)

    if args.table or args.ablation:
        records = [record for path in args.results for record in load_records(path)]
        print(
            ablation_table(records, args.ablation, args.override, args.losses)
            if args.ablation
            else table(records, args.override)
        )
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = args.results[0]
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["dataset"], r["loss"], r["seed"], tuple(r.get("overrides", []))) for r in load_records(results)}
    for dataset in args.datasets:
        for loss in args.losses:
            for seed in args.seeds:
                if (dataset, loss, seed, tuple(args.override)) in done:
                    continue
                record = run_one(dataset, loss, seed, args.root, args.override)
                with results.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                timing = f"{record['pretrain_s']:.0f} s pretrain, {record['eval_s']:.0f} s eval"
                print(f"{dataset:9} {loss:9} seed {seed}: {record['accuracy']:.2f}  ({timing})", flush=True)
    print(table(load_records(results), args.override))
    return 0


if __name__ == "__main__":
    sys.exit(main())
