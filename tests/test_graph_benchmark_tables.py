"""The tables of ``benchmarks/graph_tu.py``: which runs a row counts and how the paired difference is taken."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("graph_tu", Path(__file__).parents[1] / "benchmarks" / "graph_tu.py")
graph_tu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph_tu)


def record(seed, accuracy, overrides=(), dataset="NCI1", loss="graphcl"):
    return {"dataset": dataset, "loss": loss, "seed": seed, "accuracy": accuracy, "wall_s": 1.0,
            "overrides": list(overrides)}  # fmt: skip


def test_ablation_rows_are_paired_by_seed_against_the_base_runs():
    base = ["eval.graph_classification.search=false"]
    records = [
        record(0, 80.0, base), record(1, 78.0, base), record(2, 90.0, base),
        record(0, 79.0, [*base, "data.self_loops=true"]), record(1, 78.5, [*base, "data.self_loops=true"]),
        record(0, 10.0),  # not made with the base overrides
        record(0, 20.0, [*base, "train.shuffle=once"], dataset="MUTAG"),  # another dataset
        record(0, 30.0, base, loss="dcl"),  # filtered out by losses
    ]  # fmt: skip
    lines = graph_tu.ablation_table(records, "NCI1", base, losses=("graphcl",)).splitlines()
    assert lines[0] == "| loss | extra overrides | seed 0 | seed 1 | seed 2 | mean ± std | Δ |"
    assert len(lines) == 4
    assert lines[2] == "| `graphcl` | (none) | 80.00 | 78.00 | 90.00 | 82.67 ± 5.25 |  |"
    # (79 - 80 + 78.5 - 78) / 2 over the two shared seeds; seed 2's base run is not paired with anything
    assert lines[3] == "| `graphcl` | `data.self_loops=true` | 79.00 | 78.50 |  | 78.75 ± 0.25 | -0.25 |"


def test_table_counts_only_runs_with_exactly_the_given_overrides():
    records = [record(0, 78.0), record(1, 80.0), record(0, 10.0, ["data.self_loops=true"])]
    row = graph_tu.table(records).splitlines()[-1]
    assert row == "| `graphcl` | 79.00 ± 1.00 (n=2) | 1 |"
    row = graph_tu.table(records, ["data.self_loops=true"]).splitlines()[-1]
    assert row == "| `graphcl` | 10.00 ± 0.00 (n=1) | 1 |"
