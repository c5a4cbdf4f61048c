"""Two versions of the loss core side by side: ``loss_speed.py``'s cases, alternated call by call.

Each version runs in its own long-lived worker (its checkout's ``benchmarks/loss_speed.py`` under the
interpreter of an environment where that checkout is installed), and the driver asks the two workers in
turn, alternating which goes first, so both see the same machine state. On a shared machine wall-clock
times of a single call can vary several-fold; ``--clock cpu`` with ``--threads 1`` reports the worker's
CPU time instead, which other processes barely move.

Usage (the "before" checkout at /tmp/base with its own environment)::

    git worktree add /tmp/base main && python -m venv /tmp/base/.venv \\
        && /tmp/base/.venv/bin/pip install -c constraints.txt -e /tmp/base
    python benchmarks/loss_speed_compare.py --before /tmp/base/.venv/bin/python /tmp/base \\
        --sizes 4096 --dims 128 --reps 9 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ["floor"] + [f"mmcl {name}" for name in ("nt_xent", "supcon", "hcl", "dhel", "macl", "dystress")]

WORKER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[4]))
from benchmarks import loss_speed
x = loss_speed.inputs(int(sys.argv[2]), int(sys.argv[3]), "cpu")
steps = {}
print("ready", flush=True)
for line in sys.stdin:
    name = line.strip()
    if name not in steps:
        steps[name] = loss_speed.step(name, "cpu")
        steps[name](x)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    steps[name](x)
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)
"""


class Worker:
    def __init__(self, python: str, root: str, n: int, d: int, threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [python, "-c", WORKER, root, str(n), str(d), str(threads)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker of {root} did not start")

    def time(self, case: str) -> dict[str, float]:
        self.process.stdin.write(case + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def compare(args: argparse.Namespace, n: int, d: int) -> list[str]:
    """Markdown rows: the median of each case's timed calls before and after, and their ratio."""
    workers = {
        "before": Worker(*args.before, n, d, args.threads),
        "after": Worker(*args.after, n, d, args.threads),
    }
    times = {(side, case): [] for side in workers for case in args.cases}
    try:
        for case in args.cases:  # first call of each: the worker's warm-up
            for worker in workers.values():
                worker.time(case)
        for round_ in range(args.reps):
            for case in args.cases:
                for side in list(workers)[:: 1 if round_ % 2 == 0 else -1]:
                    times[side, case].append(workers[side].time(case)[args.clock])
            print(f"round {round_ + 1}/{args.reps}", file=sys.stderr, flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    rows = [f"| case (N = {n}, d = {d}) | before s | after s | after / before |", "|---|---:|---:|---:|"]
    for case in args.cases:
        before, after = (statistics.median(times[side, case]) for side in ("before", "after"))
        rows.append(f"| {case} | {before:.3f} | {after:.3f} | {after / before:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", nargs=2, metavar=("PYTHON", "ROOT"), required=True, help="the other version")
    parser.add_argument("--after", nargs=2, metavar=("PYTHON", "ROOT"), default=[sys.executable, str(ROOT)])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096], help="pairs N")
    parser.add_argument("--dims", type=int, nargs="+", default=[128], help="embedding dimensions d")
    parser.add_argument("--reps", type=int, default=9, help="timed rounds after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall-clock or the worker's CPU time")
    parser.add_argument("--cases", nargs="+", default=CASES, help="loss_speed.py implementations")
    args = parser.parse_args(argv)
    for n in args.sizes:
        for d in args.dims:
            print("\n".join(compare(args, n, d)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
