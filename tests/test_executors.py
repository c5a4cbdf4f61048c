"""Studies through the executors (issue 28): local workers, a local Ray instance and submitit's local mode run the
same cells into the same records; killed studies and dead workers resume; GPUs per cell; warm workers do not
change a cell's record; live progress; the dry run's estimates; bad input ends in one line.

Every test starts the real engines (worker processes, Ray, submitit) on real cells; the only stand-in is a
Slurm that refuses every submission (``sbatch`` and ``srun`` scripts on PATH), since this machine has no Slurm.
Each study runs in its own session, and a test that ends early kills that session (Ray's processes with it).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mmcl.compare.progress import Progress
from mmcl.compare.records import read_records
from tests.processes import kill_session, start, wait_for
from tests.test_compare import TINY_DIGITS

ROOT = Path(__file__).resolve().parent.parent
TU = ROOT.parent / "shared" / "data" / "tu"
ONE_THREAD = [*TINY_DIGITS, "train.threads=1"]
TINY = {"name": "tiny", "seeds": [0, 1], "losses": ["nt_xent"],
        "tasks": [{"name": "digits", "config": "quickstart", "overrides": ONE_THREAD}]}  # fmt: skip
#: What a cell computes; the rest of a record (seconds, memory, versions, times) is where and when it ran.
RESULT = ("definition", "status", "value", "scores", "representation", "diagnostics", "curves", "steps",
          "samples_seen")  # fmt: skip
SLURM_LOCAL = ["--executor", "slurm", "--executor-option", "cluster=local"]


def mmcl(*args: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``mmcl ARGS`` in its own session; killed with everything it started if it outlives ``timeout``."""
    process = subprocess.Popen([sys.executable, "-m", "mmcl", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        kill_session(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def write_study(folder: Path, study: dict, name: str = "study.yaml") -> str:
    (folder / name).write_text(yaml.safe_dump(study))
    return name


def results(folder: Path) -> dict[str, dict]:
    return {cell: {key: getattr(record, key) for key in RESULT} for cell, record in read_records(folder).items()}


def cell_pids(log: Path) -> list[int]:
    """The processes a cell ran in, from its log's first lines (``mmcl: cell ... in process PID``)."""
    if not log.is_file():
        return []
    return [int(line.split(" in process ")[1].split()[0]) for line in log.read_text().splitlines()
            if line.startswith("mmcl: cell ") and " in process " in line]  # fmt: skip


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> Path:
    """The tiny study through the local executor (warm workers, 2 at once): its study folder."""
    folder = tmp_path_factory.mktemp("local")
    done = mmcl("compare", write_study(folder, TINY), "--output", "out", "--jobs", "2", "--no-plots", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "out"


# ---------------------------------------------------------------- the same records on every executor


@pytest.mark.parametrize("executor", [["--executor", "ray"], SLURM_LOCAL], ids=["ray", "slurm"])
def test_ray_and_slurm_give_the_local_executors_records(executor, local_reference, tmp_path):
    done = mmcl("compare", write_study(tmp_path, TINY), "--output", "out", "--jobs", "2", "--no-plots", *executor,
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"with the {executor[1]} executor" in done.stderr
    assert results(tmp_path / "out") == results(local_reference) and len(results(local_reference)) == 2


def two_modality_study() -> dict:
    graphs = ["data.root=" + str(TU), "train.max_steps=2", "train.batch_size=64", "train.log_every=1",
              "eval.graph_classification.folds=3", "eval.graph_classification.inner_folds=2",
              "eval.graph_classification.search=false", "eval.graph_classification.n_jobs=1", "eval.metrics.pairs=32",
              "train.threads=1"]  # fmt: skip
    return {"name": "two", "seeds": [0, 1], "losses": ["nt_xent", {"name": "dcl", "temperature": 0.3}],
            "tasks": [{"name": "digits", "config": "quickstart", "overrides": ONE_THREAD},
                      {"name": "mutag", "config": "graph/mutag", "overrides": graphs}]}  # fmt: skip


@pytest.mark.slow
def test_an_eight_cell_two_modality_study_is_identical_on_every_executor(tmp_path):
    if not (TU / "MUTAG").is_dir():
        pytest.skip(f"the shared TU data are absent ({TU}): the two-modality study needs MUTAG; the digits-only "
                    "comparison (test_ray_and_slurm_give_the_local_executors_records) still runs")  # fmt: skip
    name = write_study(tmp_path, two_modality_study())
    runs = {"local": [], "ray": ["--executor", "ray"], "slurm": SLURM_LOCAL}
    for executor, flags in runs.items():
        done = mmcl("compare", name, "--output", executor, "--jobs", "2", "--no-plots", *flags, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    local = results(tmp_path / "local")
    assert len(local) == 8 and {r["status"] for r in local.values()} == {"ok"}
    assert {cell.split("/")[0] for cell in local} == {"digits", "mutag"}
    assert results(tmp_path / "ray") == local and results(tmp_path / "slurm") == local


# ---------------------------------------------------------------- killed studies, dead workers


STEPS = 200
LONG = {**TINY, "seeds": [0], "random_init": True, "losses": ["nt_xent", "dcl"],
        "tasks": [{"name": "digits", "config": "quickstart", "overrides": [
            *ONE_THREAD[1:], f"train.max_steps={STEPS}", "train.checkpoint_every=5"]}]}  # fmt: skip


def mid_training(folder: Path) -> bool:
    """Whether the cell of run folder ``folder`` saved a checkpoint and has many steps left (a kill now cannot let
    it finish: Ray's workers outlive the driver by a moment)."""
    metrics = folder / "metrics.jsonl"
    if not any((folder / "checkpoints").glob("step_*.pt")) or not metrics.is_file():
        return False
    try:
        return json.loads(metrics.read_text().splitlines()[-1])["step"] < STEPS * 3 // 4
    except (IndexError, ValueError):  # a line being written
        return False


@pytest.mark.slow
@pytest.mark.parametrize("executor", [[], ["--executor", "ray"], SLURM_LOCAL], ids=["local", "ray", "slurm"])
def test_a_study_killed_in_the_middle_finishes_every_cell_once(executor, tmp_path):
    name = write_study(tmp_path, LONG)
    run = ["compare", name, "--output", "out", "--no-plots", "--jobs", "1", *executor]
    records = tmp_path / "out" / "records"
    runs = tmp_path / "out" / "runs" / "digits"
    interrupted = []
    process = start(*run, cwd=tmp_path)
    try:

        def one_done_and_another_saved() -> bool:
            finished = {p.name.split("__")[1] for p in records.glob("*.json")} if records.is_dir() else set()
            left = [loss for loss in ("nt_xent", "dcl") if loss not in finished]
            saved = [loss for loss in left if mid_training(runs / loss / "seed0")]
            interrupted[:] = saved
            return bool(finished) and bool(saved)

        wait_for(one_done_and_another_saved, process=process)
    finally:
        kill_session(process)  # the driver and every process it started
    before = {p.name: p.read_text() for p in records.glob("*.json")}
    again = mmcl(*run, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p.name: p.read_text() for p in records.glob("*.json")}
    assert len(after) == 3 and all(after[name] == text for name, text in before.items())
    assert {json.loads(text)["status"] for text in after.values()} == {"ok"}
    sessions = json.loads((runs / interrupted[0] / "seed0" / "run.json").read_text())["sessions"]
    assert [s["kind"] for s in sessions][-1] == "resume" and sessions[-1]["status"] == "finished", sessions
    for loss in ("nt_xent", "dcl"):  # every cell trained once: each step in its metrics once, in order
        metrics = (runs / loss / "seed0" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in metrics] == list(range(1, STEPS + 1)), metrics


@pytest.mark.parametrize(
    "executor, reason",
    [([], "local executor: the local worker process (PID {pid}) killed by signal SIGKILL"),
     pytest.param(SLURM_LOCAL, "slurm executor: Slurm job ", marks=pytest.mark.slow)],
    ids=["local", "slurm"],
)  # fmt: skip
def test_a_cell_whose_worker_dies_is_recorded_as_lost_and_run_again_next_time(executor, reason, tmp_path):
    study = {**LONG, "random_init": False, "losses": ["nt_xent"], "seeds": [0, 1]}
    name = write_study(tmp_path, study)
    run = ["compare", name, "--output", "out", "--no-plots", "--jobs", "2", *executor]
    log = tmp_path / "out" / "runs" / "digits" / "nt_xent" / "seed0.log"
    process = start(*run, cwd=tmp_path)
    try:
        wait_for(lambda: cell_pids(log), process=process)
        (pid,) = cell_pids(log)
        os.kill(pid, signal.SIGKILL)  # its worker, as the out-of-memory killer would
        process.wait(timeout=600)
    finally:
        kill_session(process)
    assert process.returncode == 0
    records = read_records(tmp_path / "out")
    lost, other = records["digits/nt_xent/seed0"], records["digits/nt_xent/seed1"]
    assert other.ok and not lost.ok and lost.lost
    assert lost.error.startswith(reason.format(pid=pid)), lost.error
    again = mmcl(*run, cwd=tmp_path)
    assert again.returncode == 0 and "1 done, 1 failed earlier, 1 to run" in again.stderr, again.stderr[-3000:]
    assert read_records(tmp_path / "out")["digits/nt_xent/seed0"].ok


def signal_the_cell_once_it_saved(run: list[str], folder: Path, sig: int, cwd: Path):
    """``mmcl RUN``, its cell (run folder ``folder``) sent ``sig`` once it saved a checkpoint: the cell's record."""
    process = start(*run, cwd=cwd)
    try:
        wait_for(lambda: mid_training(folder), process=process)
        os.kill(cell_pids(folder.parent / f"{folder.name}.log")[0], sig)
        process.wait(timeout=600)
    finally:
        kill_session(process)
    return read_records(cwd / "out")["digits/nt_xent/seed0"]


@pytest.mark.slow
def test_ray_runs_a_task_whose_worker_died_again_and_it_resumes_from_its_checkpoint(tmp_path):
    """A worker killed mid-cell is what Ray sees when a node is lost: the task runs again (max_retries) and the
    cell resumes from its checkpoint; with max_retries=0 the cell is recorded as lost with Ray's reason, and the
    next invocation runs it again."""
    name = write_study(tmp_path, {**LONG, "random_init": False, "losses": ["nt_xent"]})
    folder = tmp_path / "out" / "runs" / "digits" / "nt_xent" / "seed0"
    for retries, outcome in (("3", "resumed"), ("0", "lost")):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        run = ["compare", name, "--output", "out", "--no-plots", "--executor", "ray",
               "--executor-option", f"max_retries={retries}"]  # fmt: skip
        record = signal_the_cell_once_it_saved(run, folder, signal.SIGKILL, tmp_path)
        if outcome == "resumed":
            sessions = json.loads((folder / "run.json").read_text())["sessions"]
            assert record.ok and [s["kind"] for s in sessions] == ["new", "resume"], sessions
        else:
            assert record.lost and record.error.startswith("ray executor: the Ray task failed:"), record.error
            assert "Worker" in record.error or "worker" in record.error
            again = mmcl(*run, cwd=tmp_path)
            assert again.returncode == 0 and read_records(tmp_path / "out")["digits/nt_xent/seed0"].ok


@pytest.mark.slow
def test_slurm_requeues_a_cell_out_of_time_which_resumes_from_its_checkpoint(tmp_path):
    """Slurm signals a job whose time is nearly up, or that it preempts (USR2, submitit's); the job requeues itself
    and its cell resumes. Here the signal goes to the job's process in submitit's local mode; with a time limit of
    one minute submitit counts any signal as the time limit's, the case that needs the cell to be checkpointable
    (a preempted job is requeued whatever it runs)."""
    name = write_study(tmp_path, {**LONG, "random_init": False, "losses": ["nt_xent"]})
    folder = tmp_path / "out" / "runs" / "digits" / "nt_xent" / "seed0"
    run = ["compare", name, "--output", "out", "--no-plots", *SLURM_LOCAL, "--executor-option", "time=1"]
    record = signal_the_cell_once_it_saved(run, folder, signal.SIGUSR2, tmp_path)
    sessions = json.loads((folder / "run.json").read_text())["sessions"]
    assert record.ok and [s["kind"] for s in sessions] == ["new", "resume"], sessions
    assert len(cell_pids(folder.parent / "seed0.log")) == 2  # the requeued job is another process


# ---------------------------------------------------------------- GPUs, warm workers


def test_each_running_cell_gets_its_own_gpu(tmp_path):
    """Two GPUs lent to the study (CUDA_VISIBLE_DEVICES=3,5 here, a machine without any): two workers at once,
    each on one of them for all its cells; --jobs 1 uses one. (torch finds no GPU there and trains on the CPU.)"""
    name = write_study(tmp_path, {**TINY, "seeds": [0, 1, 2, 3]})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
    done = mmcl("compare", name, "--output", "two", "--no-plots", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "progress.json").read_text())["parallelism"] == 2
    devices = {}
    for log in (tmp_path / "two" / "runs" / "digits" / "nt_xent").glob("*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("mmcl: cell "):
                pid, device = line.split(" in process ")[1].split(" (CUDA_VISIBLE_DEVICES=")
                devices.setdefault(pid, set()).add(device.rstrip(")"))
    assert sorted(d for found in devices.values() for d in found) == ["3", "5"], devices  # one GPU per worker
    one = mmcl("compare", name, "--output", "one", "--no-plots", "--jobs", "1", cwd=tmp_path, env=env)
    logs = "".join(p.read_text() for p in (tmp_path / "one" / "runs" / "digits" / "nt_xent").glob("*.log"))
    assert one.returncode == 0 and "CUDA_VISIBLE_DEVICES=3)" in logs and "CUDA_VISIBLE_DEVICES=5" not in logs


def test_ray_asks_for_the_studys_gpus_per_cell(tmp_path):
    """``resources: {gpus: 1}`` on a local Ray instance declared with two GPUs (the study's ``executor:``
    section): Ray gives each cell one of them."""
    study = {**TINY, "seeds": [0, 1, 2], "resources": {"cpus": 1, "gpus": 1},
             "executor": {"name": "ray", "local_gpus": 2}}  # fmt: skip
    done = mmcl("compare", write_study(tmp_path, study), "--output", "out", "--no-plots", "--jobs", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "runs" / "digits" / "nt_xent").glob("*.log"))
    devices = [line.split("CUDA_VISIBLE_DEVICES=")[1].rstrip(")") for line in logs.splitlines()
               if line.startswith("mmcl: cell ")]  # fmt: skip
    assert len(devices) == 3 and set(devices) <= {"0", "1"}, devices


def test_a_warm_worker_gives_a_cell_the_record_a_fresh_process_gives(tmp_path):
    """The same cell alone in a fresh process, and after two other cells (another loss, an untrained encoder) in
    one warm worker: bit-identical records."""
    from mmcl.compare.executor import EXECUTORS, Resources
    from mmcl.compare.runner import run_pool, write_spec
    from mmcl.compare.study import read_study

    study = read_study({**TINY, "seeds": [0, 1], "random_init": True, "losses": ["nt_xent", "dcl"]})
    cells = {cell.id: cell for cell in study.cells()}
    order = {"fresh": ["digits/nt_xent/seed0"], "warm": ["digits/dcl/seed1", "digits/random_init/seed0",
                                                         "digits/nt_xent/seed0"]}  # fmt: skip
    for folder, ids in order.items():
        executor = EXECUTORS.get("local")(tmp_path / folder, 1, Resources(), {"warm": folder == "warm"})
        executor.start()
        specs = iter([write_spec(study, cells[cell], tmp_path / folder, 1) for cell in ids])
        try:
            run_pool(functools.partial(next, specs, None), lambda *ended: None, executor)
        finally:
            executor.close()
    warm = tmp_path / "warm" / "runs" / "digits"
    pids = {cell_pids(warm / loss / "seed0.log")[0] for loss in ("random_init", "nt_xent")}
    assert len(pids | set(cell_pids(warm / "dcl" / "seed1.log"))) == 1, "the three cells ran in one worker"
    fresh, after = results(tmp_path / "fresh"), results(tmp_path / "warm")
    assert fresh["digits/nt_xent/seed0"] == after["digits/nt_xent/seed0"] and fresh["digits/nt_xent/seed0"]["value"]


# ---------------------------------------------------------------- progress


def test_the_eta_divides_the_work_left_by_the_parallelism(tmp_path):
    class Cell:  # what the pool hands Progress: a spec (task, id, record) and when it started
        def __init__(self, task: str, number: int) -> None:
            self.spec = type("Spec", (), {"task": task, "id": f"{task}/{number}", "record": str(tmp_path / "no")})
            self.started = time.perf_counter()

    progress = Progress(tmp_path, "progress.json", "s", Counter({"a": 3, "b": 1}), 0, 0, {"a": [10.0], "b": [30.0]},
                        "test", parallelism=2)  # fmt: skip
    assert progress.eta() == pytest.approx((3 * 10 + 30) / 2)
    progress.started([Cell("a", 0), Cell("b", 1)])
    assert progress.eta() == pytest.approx((10 + 30 + 2 * 10) / 2, abs=0.1)
    state = json.loads((tmp_path / "progress.json").read_text())
    assert (state["running"], state["waiting"], state["total"]) == (2, 2, 4)
    lonely = Progress(tmp_path, "p.json", "s", Counter({"b": 1}), 0, 0, {"b": [30.0]}, "test", parallelism=8)
    assert lonely.eta() == pytest.approx(30.0)  # one cell left: its own length, whatever the parallelism


def test_progress_is_shown_while_the_study_runs_and_status_prints_it(tmp_path):
    name = write_study(tmp_path, TINY)
    main, terminal = pty.openpty()  # the bar shows on a terminal, here of 30 rows and 150 columns
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 150, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "mmcl", "compare", name, "--output", "out", "--no-plots",
                                "--jobs", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=terminal,
                               start_new_session=True)  # fmt: skip
    os.close(terminal)
    shown = []
    reader = threading.Thread(target=drain, args=(main, shown), daemon=True)
    reader.start()
    path = tmp_path / "out" / "progress.json"
    try:
        wait_for(lambda: path.is_file() and json.loads(path.read_text())["running"] == 1, process=process)
        status = mmcl("compare", "out", "--status", cwd=tmp_path)
        assert status.returncode == 0 and "tiny: cells (progress.json): running" in status.stdout, status.stderr
        assert "0/2 done, 1 running, 0 failed, 1 waiting; ETA unknown" in status.stdout
        assert process.wait(timeout=600) == 0
    finally:
        kill_session(process)
    reader.join(timeout=10)
    state = json.loads(path.read_text())
    assert state["finished"] and (state["done"], state["running"], state["waiting"]) == (2, 0, 0)
    assert state["seconds_per_cell"]["digits"] > 0
    assert "2/2 done" in mmcl("compare", "out", "--status", cwd=tmp_path).stdout
    bar = b"".join(shown).decode(errors="replace")
    assert "tiny: cells" in bar and "2/2" in bar and "ETA" in bar, bar[-2000:]


def drain(fd: int, into: list) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other end closed
            return
        if not chunk:
            return
        into.append(chunk)


# ---------------------------------------------------------------- the dry run's estimates


def test_a_dry_run_estimates_from_finished_studies_and_divides_by_the_parallelism(local_reference, tmp_path):
    other = {**TINY, "name": "other", "losses": ["dcl", "dhel"]}  # the same task config, other losses
    name = write_study(tmp_path, other)
    seconds = [r.seconds for r in read_records(local_reference).values()]
    per_cell = sum(seconds) / len(seconds)
    for jobs in ("1", "2"):
        dry = mmcl("compare", name, "--output", "out", "--dry-run", "--jobs", jobs, "--estimate-from",
                   str(local_reference), cwd=tmp_path)  # fmt: skip
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert f"{per_cell:.1f}  --estimate-from" in dry.stdout, dry.stdout
        total = 4 * per_cell / int(jobs) / 60
        assert f"estimated time: {total:.1f} min with {jobs} cell(s) at once" in dry.stdout
    assert not (tmp_path / "out").exists()
    changed = write_study(
        tmp_path, {**other, "tasks": [{**TINY["tasks"][0], "overrides": [*ONE_THREAD, "train.max_steps=3"]}]}
    )
    dry = mmcl("compare", changed, "--output", "out", "--dry-run", "--estimate-from", str(local_reference),
               cwd=tmp_path)  # fmt: skip
    assert "no estimate yet for ['digits']" in dry.stdout  # another budget is another task config


def test_a_dry_run_calibrates_a_task_without_finished_cells(tmp_path):
    name = write_study(tmp_path, {**TINY, "tasks": [{**TINY["tasks"][0], "overrides": [
        *ONE_THREAD[1:], "train.max_steps=12"]}]})  # fmt: skip
    dry = mmcl("compare", name, "--output", "out", "--dry-run", "--calibrate", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    row = next(line for line in dry.stdout.splitlines() if line.startswith("digits"))
    assert row.endswith("calibration") and float(row.split()[-2]) > 0, dry.stdout
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- tuning trials


def test_tuning_trials_run_through_the_chosen_executor(tmp_path):
    tune = {"trials": 2, "sampler": "random", "validation_fraction": 0.5,  # 32 of the 64 items: every class
            "space": {"nt_xent": {"temperature": [0.1, 0.5]}}}  # fmt: skip
    tuned = {**TINY, "seeds": [0], "tune": tune}
    name = write_study(tmp_path, tuned)
    done = mmcl("compare", name, "--output", "out", "--no-plots", "--jobs", "2", *SLURM_LOCAL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [json.loads(line) for line in (tmp_path / "out" / "trials.jsonl").read_text().splitlines()]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    submitted = list((tmp_path / "out" / "slurm").glob("*/*_submitted.pkl"))
    assert len(submitted) == 3, submitted  # two trials and the selected cell, each a submitit job
    assert read_records(tmp_path / "out")["digits/nt_xent/seed0"].tuned["selected_trial"] in (0, 1)


# ---------------------------------------------------------------- bad input


def fake_slurm(folder: Path) -> dict:
    """A Slurm whose sbatch refuses every submission as a cluster does for a wrong account."""
    folder.mkdir()
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account "
                                   "or account/partition combination specified' >&2\nexit 1\n")  # fmt: skip
    for tool in ("srun", "sbatch"):
        (folder / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


HIDE = "import sys; sys.modules[{!r}] = None; from mmcl.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--executor", "kubernetes"], "unknown executor 'kubernetes' (--executor); available: ['local', 'ray', "
                                       "'slurm']"),
        (["--executor", "ray", "--executor-option", "adress=10.0.0.1:6379"],
         "--executor-option adress=10.0.0.1:6379: the ray executor has no option 'adress'; its options: address"),
        (["--executor-option", "warm=maybe"], "--executor-option warm=maybe: must be true or false"),
        (["--executor-option", "warm"], "--executor-option 'warm' must look like KEY=VALUE"),
        (["--executor", "slurm", "--executor-option", "time=an hour"], "--executor-option time=an hour:"),
        (["--jobs", "0"], "--jobs 0: run at least one cell at a time"),
        (["--executor", "ray", "--executor-option", "address=10.255.255.1:6379", "--executor-option",
          "connect_timeout=1"], "the Ray cluster at address=10.255.255.1:6379 does not answer"),
        (["--executor", "ray", "--executor-option", "address=127.0.0.1:9"],
         "the Ray cluster at address=127.0.0.1:9 does not answer"),
        (["hide:ray", "--executor", "ray"], "--executor ray needs ray, which is not installed here"),
        (["hide:submitit", "--executor", "slurm"], "install it with: pip install 'mmcl[slurm]'"),
        (["--executor", "slurm"], "--executor slurm: no Slurm here"),
    ],
)  # fmt: skip
def test_bad_executor_input_ends_in_one_line_before_anything_is_written(flags, message, tmp_path):
    if flags == ["--executor", "slurm"] and shutil.which("srun"):
        pytest.skip("this machine has Slurm")
    name = write_study(tmp_path, TINY)
    args = ["compare", name, "--output", "out", *[f for f in flags if not f.startswith("hide:")]]
    hidden = [f.split(":")[1] for f in flags if f.startswith("hide:")]
    if hidden:
        command = [sys.executable, "-c", HIDE.format(hidden[0]), *args]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    else:
        done = mmcl(*args, cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if "Token authentication" not in line]  # Ray's own notice
    assert done.returncode == 2 and lines[-1].startswith("mmcl: error: ") and message in lines[-1], done.stderr
    assert len([line for line in lines if line.startswith("mmcl")]) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"executor": {"name": "slurm", "partiton": "gpu"}}, "the slurm executor has no option 'partiton'"),
        ({"executor": {"name": "pbs"}}, "unknown executor 'pbs'"),
        ({"resources": {"cpus": 0}}, "resources.cpus=0 must be a whole number >= 1"),
        ({"resources": {"gpu": 1}}, "resources={'gpu': 1} must be a mapping with cpus and/or gpus"),
    ],
)
def test_a_study_with_a_bad_executor_or_resources_section_is_refused_when_read(section, message):
    from mmcl.compare.study import read_study

    with pytest.raises(ValueError) as error:
        read_study({**TINY, **section})
    assert message in str(error.value)


def test_a_submission_slurm_refuses_ends_in_its_message_before_any_cell_is_lost(tmp_path):
    name = write_study(tmp_path, TINY)
    env = fake_slurm(tmp_path / "bin")
    done = mmcl("compare", name, "--output", "out", "--executor", "slurm", "--executor-option", "account=nope",
                cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith(
        "mmcl: error: Slurm refused the job array of 2 cell(s):"), done.stderr  # fmt: skip
    assert "Invalid account or account/partition combination specified" in done.stderr
    assert not list((tmp_path / "out" / "records").glob("*.json"))
