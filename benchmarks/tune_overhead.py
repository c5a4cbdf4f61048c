"""What a tuned study's trials cost besides training and evaluation, and what its pruner saved, from its records.

A trial is a cell: its own process (Python start, imports, data loading, the model's construction) around training
and validation. This reads a finished study folder and reports, per task, the mean seconds of a trial, of its
training and of its validation, and the rest (``seconds - train_seconds - eval_seconds``: process start, imports,
data loading, writing the record) as a share of the trial; then the training steps the pruner did not run.

    python benchmarks/tune_overhead.py benchmarks/results/study-fair-cpu [CONSOLE_LOG ...]

A record's ``seconds`` is measured inside the cell, so its rest leaves out the process's start and imports. The
study command's console output (``<task>/<loss>/trial<k> ok (<s> s)``: seconds measured by the driver, from handing
the trial to a worker to its end) gives the whole cost outside training and validation; pass those logs to add a
second table, split into trials that ran in a fresh process and in a warm worker by the log that names them
(``fresh:LOG`` for a log of fresh processes, as mmcl before the executors of issue 28 ran them).

No timing is asserted anywhere: the figures go to docs/compare.md with the machine they were measured on.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def trial_records(folder: Path) -> list[dict]:
    """The records of a study's trials (``trials/records/*.json``)."""
    return [json.loads(path.read_text()) for path in sorted((folder / "trials" / "records").glob("*.json"))]


def overhead_table(records: list[dict]) -> list[dict]:
    """Per task: trials, mean seconds of a trial, of training, of validation, and the rest's share."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record.get("status") == "ok":
            by_task[record["task"]].append(record)
    rows = []
    for task, mine in by_task.items():
        total = statistics.mean(r["seconds"] for r in mine)
        train = statistics.mean(r["train_seconds"] for r in mine)
        evaluation = statistics.mean(r["eval_seconds"] for r in mine)
        rest = total - train - evaluation
        rows.append({"task": task, "trials": len(mine), "seconds": total, "train": train, "validation": evaluation,
                     "rest": rest, "rest_share": rest / total if total else float("nan")})  # fmt: skip
    return rows


def pruning_savings(folder: Path) -> dict:
    """The training steps that pruned trials did not run, against the searches' full steps (``trials.jsonl``)."""
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines() if line.strip()]
    full: dict[str, int] = defaultdict(int)
    for trial in trials:
        full[trial["task"]] = max(full[trial["task"]], trial.get("steps") or 0)
    pruned = [t for t in trials if t["state"] == "pruned"]
    saved = sum(full[t["task"]] - (t.get("steps") or 0) for t in pruned)
    planned = sum(full[t["task"]] for t in trials)
    return {"trials": len(trials), "pruned": len(pruned), "steps_saved": saved, "steps_planned": planned}


def driver_table(records: list[dict], logs: list[str]) -> list[dict]:
    """Per task and kind of process (fresh or warm): the driver's mean seconds per trial and the part outside
    training and validation (the driver's seconds less the record's ``train_seconds`` and ``eval_seconds``)."""
    by_id = {record["id"]: record for record in records if record.get("status") == "ok"}
    last: dict[str, tuple[str, int]] = {}  # a trial run again (its record replaced) counts at its last run
    for log in logs:
        kind, name = ("fresh", log[len("fresh:") :]) if log.startswith("fresh:") else ("warm", log)
        for trial_id, seconds in re.findall(r"^(\S+/trial\d+) ok \((\d+) s\)", Path(name).read_text(), re.M):
            last[trial_id] = (kind, int(seconds))
    rows: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for trial_id, (kind, seconds) in last.items():
        record = by_id.get(trial_id)
        if record is not None:
            rows[(record["task"], kind)].append((seconds, seconds - record["train_seconds"] - record["eval_seconds"]))
    return [{"task": task, "process": kind, "trials": len(values), "seconds": statistics.mean(s for s, _ in values),
             "outside": statistics.mean(o for _, o in values)}
            for (task, kind), values in sorted(rows.items())]  # fmt: skip


def main(folder: str, logs: list[str]) -> None:
    path = Path(folder)
    print(f"{'task':12}{'trials':>8}{'s/trial':>10}{'train s':>10}{'valid. s':>10}{'rest s':>9}{'rest %':>8}")
    for row in overhead_table(trial_records(path)):
        print(f"{row['task']:12}{row['trials']:>8}{row['seconds']:>10.1f}{row['train']:>10.1f}"
              f"{row['validation']:>10.1f}{row['rest']:>9.1f}{100 * row['rest_share']:>7.0f}%")  # fmt: skip
    saved = pruning_savings(path)
    share = 100 * saved["steps_saved"] / saved["steps_planned"] if saved["steps_planned"] else float("nan")
    print(f"\npruned {saved['pruned']} of {saved['trials']} trials: {saved['steps_saved']} of "
          f"{saved['steps_planned']} training steps not run ({share:.0f}%)")  # fmt: skip
    if logs:
        print(f"\n{'task':12}{'process':>8}{'trials':>8}{'s/trial':>10}{'outside s':>11}{'outside %':>11}"
              "  (the driver's clock, whole seconds)")  # fmt: skip
        for row in driver_table(trial_records(path), logs):
            print(f"{row['task']:12}{row['process']:>8}{row['trials']:>8}{row['seconds']:>10.1f}{row['outside']:>11.1f}"
                  f"{100 * row['outside'] / row['seconds']:>10.0f}%")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
