"""Speed and memory of the loss core beside lightly, pytorch-metric-learning, a plain log-softmax and the
matmul floor.

Each case times one forward and backward pass of a loss on ``N`` pairs of ``d``-dimensional embeddings
(two views, ``2N x 2N`` similarities). Implementations:

* ``floor``: the matrix products alone, ``S = Z Z^T`` and the two backward products ``S Z``, ``S^T Z``
  (``Z = [z_a; z_b]``, ``2N x d``), without autograd: no loss can do less arithmetic.
* ``mmcl <loss>``: the registered losses with their defaults (the blockwise path above its threshold);
  ``mmcl <loss> dense``: the same loss with ``blockwise=False`` (the generic pipeline).
* ``log-softmax``: NT-Xent written plainly (normalise, ``Z Z^T / tau``, mask the diagonal, cross entropy).
* ``lightly``: ``lightly.loss.NTXentLoss`` (lightly 1.6); ``pml NT-Xent`` / ``pml SupCon``:
  ``pytorch_metric_learning.losses.NTXentLoss`` / ``SupConLoss`` on the stacked views with instance
  (NT-Xent) or class labels (SupCon).

Timing: within one (N, d) the implementations run in turns (one warm-up, then ``--reps`` rounds), so a
change of machine load hits every implementation alike; the median is reported with its ratio to the
floor and to each peer. Peak memory: every case runs once more in a fresh subprocess; on the CPU the
kernel's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after the inputs are made)
minus the resident set at that point, on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation
before the call. Cases whose estimated memory exceeds ``--max-gib`` are skipped and reported as such.

Usage::

    python benchmarks/loss_speed.py                                  # the grid, CPU (and CUDA when present)
    python benchmarks/loss_speed.py --sizes 1024 --dims 128 --reps 3
    python benchmarks/loss_speed.py --large                          # N = 65536, d = 128: peak memory
    python benchmarks/loss_speed.py --output docs/loss_speed.md      # also write the tables
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmcl import losses  # noqa: E402
from mmcl.contract import ensure_torchvision_ops  # noqa: E402

ensure_torchvision_ops()  # CPU-only torch: before lightly imports torchvision

MMCL_LOSSES = ("nt_xent", "supcon", "hcl", "dhel", "macl", "dystress")
PEERS = ("log-softmax", "lightly", "pml NT-Xent", "pml SupCon")
N_CLASSES = 100  # SupCon labels: uniform over 100 classes
GIB = 1 << 30

# Estimated peak memory in (2N x 2N) float32 tables; a case above --max-gib is skipped.
TABLES = {"floor": 1.5, "log-softmax": 4, "lightly": 6, "pml SupCon": 10, "dense": 12}


def implementations(include_dense: bool) -> list[str]:
    names = ["floor", *PEERS, *(f"mmcl {name}" for name in MMCL_LOSSES)]
    if include_dense:
        names += [f"mmcl {name} dense" for name in MMCL_LOSSES]
    return names


def estimated_bytes(name: str, n: int) -> float:
    table = 4.0 * (2 * n) ** 2
    if name == "pml NT-Xent":
        # (positive pair x negative pair) float tables, 2N x 2N(2N - 2), about four of them alive at once
        # (measured: 17.5 GB at N = 512)
        return 4.0 * (2 * n) * (2 * n) * (2 * n - 2) * 4
    if name.startswith("mmcl") and not name.endswith("dense"):
        return 64.0 * n * 1024  # linear in N
    key = "dense" if name.endswith("dense") else name
    return TABLES[key] * table


def inputs(n: int, d: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g)
    z_b = z_a + 0.5 * torch.randn(n, d, generator=g)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    return {"z_a": z_a.to(device), "z_b": z_b.to(device), "labels": labels.to(device)}


def step(name: str, device: str) -> Callable[[dict], None]:
    """One forward and backward pass of implementation ``name`` on fresh leaves of the inputs."""
    if name == "floor":

        def floor(x):
            with torch.no_grad():
                Z = torch.cat([x["z_a"], x["z_b"]])
                S = Z @ Z.T
                S @ Z, S.T @ Z

        return floor
    if name == "log-softmax":
        return _leaves(_log_softmax_nt_xent)
    if name == "lightly":
        from lightly.loss import NTXentLoss

        fn = NTXentLoss(temperature=0.5)
        return _leaves(lambda a, b, y: fn(a, b))
    if name.startswith("pml"):
        from pytorch_metric_learning import losses as pml

        if name == "pml NT-Xent":
            fn = pml.NTXentLoss(temperature=0.5)
            return _leaves(lambda a, b, y: fn(torch.cat([a, b]), torch.arange(a.shape[0], device=a.device).repeat(2)))
        fn = pml.SupConLoss(temperature=0.1)
        return _leaves(lambda a, b, y: fn(torch.cat([a, b]), y.repeat(2)))
    parts = name.split()
    loss_name, dense = parts[1], parts[-1] == "dense"
    fn = losses.build(loss_name, **({"blockwise": False} if dense else {})).to(device)
    if loss_name == "supcon":
        return _leaves(lambda a, b, y: fn(a, b, labels=y))
    return _leaves(lambda a, b, y: fn(a, b))


def _leaves(loss: Callable) -> Callable[[dict], None]:
    def run(x):
        a, b = x["z_a"].detach().requires_grad_(), x["z_b"].detach().requires_grad_()
        loss(a, b, x["labels"]).backward()

    return run


def _log_softmax_nt_xent(a, b, y, temperature=0.5):
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return torch.nn.functional.cross_entropy(logits, target)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_size(n: int, d: int, device: str, names: list[str], reps: int) -> dict[str, list[float]]:
    """Median-ready times of every implementation, run in turns."""
    x = inputs(n, d, device)
    steps = {name: step(name, device) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(reps + 1):
        for name, run in steps.items():
            _sync(device)
            start = time.perf_counter()
            run(x)
            _sync(device)
            if round_:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - start)
    return times


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure(name: str, n: int, d: int, device: str) -> dict:
    """Peak memory of one call (run in a fresh process by :func:`peak_memory`)."""
    x = inputs(n, d, device)
    run = step(name, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        run(x)
        torch.cuda.synchronize()
        return {"peak": torch.cuda.max_memory_allocated() - before, "seconds": time.perf_counter() - start}
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    before = _status("VmRSS")
    start = time.perf_counter()
    run(x)
    return {"peak": _status("VmHWM") - before, "seconds": time.perf_counter() - start}


def peak_memory(name: str, n: int, d: int, device: str) -> dict:
    command = [sys.executable, __file__, "--measure", name, str(n), str(d), device]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {
            "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        }
    return json.loads(result.stdout.strip().splitlines()[-1])


def _fmt_bytes(value: float) -> str:
    return f"{value / (1 << 20):,.0f} MiB" if value < GIB else f"{value / GIB:.2f} GiB"


def table(n: int, d: int, device: str, times: dict, memory: dict, skipped: dict) -> list[str]:
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    floor = medians.get("floor")
    peers = [p for p in PEERS if p in medians or p in skipped]
    lines = [
        f"### N = {n}, d = {d} ({device})",
        "",
        "| implementation | median s | × floor | " + " | ".join(f"× {p}" for p in peers) + " | × dense | peak memory |",
        "|---|---:|---:|" + "---:|" * len(peers) + "---:|---:|",
    ]
    for name in [*times, *skipped]:
        if name in skipped:
            lines.append(f"| {name} | skipped: {skipped[name]} |" + " |" * (len(peers) + 3))
            continue
        t = medians[name]
        cells = [name, f"{t:.3f}", f"{t / floor:.2f}" if floor else ""]
        is_mmcl = name.startswith("mmcl") and not name.endswith("dense")
        for p in peers:
            cells.append(f"{t / medians[p]:.2f}" if is_mmcl and p in medians else "")
        dense = f"{name} dense"
        cells.append(f"{t / medians[dense]:.2f}" if is_mmcl and dense in medians else "")
        m = memory.get(name, {})
        cells.append(_fmt_bytes(m["peak"]) if "peak" in m else m.get("error", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load[0]:.2f} at start"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="pairs N")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 768], help="embedding dimensions d")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds after one warm-up")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, cuda if present)")
    parser.add_argument("--max-gib", type=float, default=6.0, help="skip cases estimated above this memory")
    parser.add_argument("--no-dense", action="store_true", help="leave out mmcl's dense path")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--large", action="store_true", help="peak memory of mmcl nt_xent at N = 65536, d = 128")
    parser.add_argument("--large-losses", nargs="+", default=["nt_xent"], help="losses for --large")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown tables here")
    parser.add_argument("--measure", nargs=4, metavar=("NAME", "N", "D", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        name, n, d, device = args.measure
        print(json.dumps(measure(name, int(n), int(d), device)))
        return 0
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    lines = [f"Machine: {machine()}.", ""]
    results = []
    if args.large:
        for device in devices:
            for loss_name in args.large_losses:
                m = peak_memory(f"mmcl {loss_name}", 65536, 128, device)
                line = f"mmcl {loss_name}, N = 65536, d = 128 ({device}): " + (
                    f"peak memory {_fmt_bytes(m['peak'])}, {m['seconds']:.1f} s" if "peak" in m else m["error"]
                )
                print(line, flush=True)
                lines.append(f"* {line}")
                results.append({"large": loss_name, "device": device, **m})
        lines.append("")
    else:
        for device in devices:
            for n in args.sizes:
                for d in args.dims:
                    names, skipped = [], {}
                    for name in implementations(not args.no_dense):
                        need = estimated_bytes(name, n) * (1 if device == "cuda" else 1)
                        if need > args.max_gib * GIB:
                            skipped[name] = f"needs about {_fmt_bytes(need)}"
                        else:
                            names.append(name)
                    times = time_size(n, d, device, names, args.reps)
                    memory = {} if args.no_memory else {name: peak_memory(name, n, d, device) for name in names}
                    block = table(n, d, device, times, memory, skipped)
                    print("\n".join(block), flush=True)
                    lines += block
                    results.append(
                        {"n": n, "d": d, "device": device, "times": times, "memory": memory, "skipped": skipped}
                    )
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.2f}." if hasattr(os, "getloadavg") else "")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
