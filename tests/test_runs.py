"""Runs you can trust: run folders, resume, checkpoints, evaluation storage, metadata, configuration, health and
errors. One regression test per defect of the "Runs you can trust" issue; real processes where the behaviour is
about processes (concurrent runs, the lock, 2-process resume, kill -9 during saves)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import mmcl
from mmcl.cli import main
from mmcl.engine.config import load_config
from mmcl.engine.trainer import NonFiniteError, pretrain
from mmcl.runs import checkpoints as checkpoint
from mmcl.runs import folder as runs
from tests.processes import wait_for
from tests.test_distributed import torchrun
from tests.test_engine import ROOT, WORKER, logged_metrics, max_difference, run_worker, tiny, weights

TU_ROOT = ROOT.parent / "shared" / "data" / "tu"
needs_mutag = pytest.mark.skipif(not (TU_ROOT / "MUTAG" / "raw").is_dir(), reason="shared TU data absent")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcl", *args], capture_output=True, text=True, timeout=300)


def in_process(capsys, *args: str) -> tuple[int, str]:
    """``mmcl ARGS`` in this process: (exit status, stderr)."""
    status = main(list(args))
    return status, capsys.readouterr().err


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def four_steps(tmp_path) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    return mmcl.pretrain(tiny(train={"max_steps": 4, "checkpoint_every": 2, "output_dir": str(tmp_path),
                                     "run_name": "four"})).folder  # fmt: skip


# ---------------------------------------------------------------- run folders with one meaning


def test_an_existing_run_folder_is_never_restarted(four_steps, capsys):
    before = snapshot(four_steps)
    with pytest.raises(ValueError, match=r"exists: continue it with `mmcl pretrain .*four --resume`"):
        mmcl.pretrain(four_steps)
    with pytest.raises(ValueError, match="start a new run with another train.run_name"):
        mmcl.pretrain(tiny(train={"output_dir": str(four_steps.parent), "run_name": "four"}))
    status, err = in_process(capsys, "pretrain", str(four_steps))
    assert status == 2 and err.startswith("mmcl: error: run folder") and "--resume" in err
    assert snapshot(four_steps) == before, "nothing of the run may change"


def test_new_runs_started_together_get_their_own_folders(tmp_path):
    folders = [runs.create_run_folder(str(tmp_path), None, "vision-digits-nt_xent-20261130-120000") for _ in range(3)]
    assert [f.name for f in folders] == [
        "vision-digits-nt_xent-20261130-120000",
        "vision-digits-nt_xent-20261130-120000-2",
        "vision-digits-nt_xent-20261130-120000-3",
    ]


def test_auto_resume_continues_the_same_config_and_refuses_another(four_steps):
    config = tiny(train={"max_steps": 6, "checkpoint_every": 2, "output_dir": str(four_steps.parent),
                         "run_name": "four", "auto_resume": True})  # fmt: skip
    run = mmcl.pretrain(config)
    assert run.folder == four_steps and [r["step"] for r in run.metrics()] == [1, 2, 3, 4, 5, 6]
    assert (
        run.folder.joinpath("run.json").is_file()
        and json.loads((four_steps / "run.json").read_text())["sessions"][-1]["resumed_at_step"] == 4
    )
    other = {**config, "loss": {"name": "dhel"}}
    with pytest.raises(ValueError, match="holds a run of another config"):
        mmcl.pretrain(other)


# ---------------------------------------------------------------- resume that checks


def test_resume_refuses_changes_to_what_the_finished_steps_computed(four_steps, capsys):
    before = (four_steps / "config.yaml").read_bytes()
    with pytest.raises(ValueError) as refused:
        mmcl.pretrain(four_steps, ["loss.name=dhel", "train.batch_size=128", "optim.lr=0.1"], resume=True)
    for key in ("loss.name: 'nt_xent' -> 'dhel'", "train.batch_size: 32 -> 128", "optim.lr: 0.5 -> 0.1"):
        assert key in str(refused.value)
    status, err = in_process(capsys, "pretrain", str(four_steps), "model.head_dim=32", "--resume")
    assert status == 2 and "model.head_dim: 16 -> 32" in err and "Traceback" not in err
    assert (four_steps / "config.yaml").read_bytes() == before, "config.yaml is written only after validation"
    assert mmcl.evaluate(four_steps, tasks=["knn"])["knn"]["n_test"] == 60  # still evaluable
    with pytest.raises(ValueError, match="train.max_steps=3 is below the 4 steps already done"):
        mmcl.pretrain(four_steps, ["train.max_steps=3"], resume=True)


def test_resume_accepts_and_records_a_longer_run_and_logs_each_step_once(four_steps):
    run = mmcl.pretrain(four_steps, ["train.max_steps=6", "train.log_every=1", "eval.knn.k=5"], resume=True)
    assert [r["step"] for r in run.metrics()] == [1, 2, 3, 4, 5, 6]
    session = json.loads((four_steps / "run.json").read_text())["sessions"][-1]
    assert session["kind"] == "resume" and session["resumed_at_step"] == 4 and session["status"] == "finished"
    assert session["changes"] == {"train.max_steps": [4, 6], "eval.knn.k": [200, 5]}
    assert run.config.train.max_steps == 6 and run.config.eval.options["knn"].k == 5


def test_metrics_hold_each_step_once_when_a_resume_repeats_steps(four_steps):
    checkpoint.checkpoint_path(four_steps, 4).unlink()  # as if the run had stopped after step 2, logging 3 and 4
    run = mmcl.pretrain(four_steps, resume=True)
    assert [r["step"] for r in run.metrics()] == [1, 2, 3, 4]


# ---------------------------------------------------------------- checkpoints that degrade gracefully


def test_an_unreadable_newest_checkpoint_is_skipped_by_resume_and_evaluation(four_steps, caplog):
    reference = weights(four_steps, 4)
    newest = checkpoint.checkpoint_path(four_steps, 4)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut short, as a full disk leaves it
    results = mmcl.evaluate(four_steps, tasks=["knn"])
    assert results["checkpoint"].endswith("step_00000002.pt")
    assert "skipped step_00000004.pt" in caplog.text and "weights_only" not in caplog.text
    mmcl.pretrain(four_steps, resume=True)
    assert max_difference(weights(four_steps), reference) < 1e-6  # steps 3-4 again, from step 2
    session = json.loads((four_steps / "run.json").read_text())["sessions"][-1]
    assert session["resumed_from"] == "step_00000002.pt" and session["skipped"] == ["step_00000004.pt"]


def test_no_readable_checkpoint_is_a_clear_error(four_steps, capsys):
    for path in checkpoint.list_checkpoints(four_steps):
        path.write_bytes(b"not a checkpoint")
    status, err = in_process(capsys, "evaluate", str(four_steps))
    assert status == 2 and "no readable checkpoint" in err and "weights_only" not in err
    status, err = in_process(capsys, "pretrain", str(four_steps), "--resume")
    assert status == 2 and "no readable checkpoint" in err


def test_a_checkpoint_that_does_not_fit_the_config_is_a_clear_error(four_steps, capsys):
    saved = yaml.safe_load((four_steps / "config.yaml").read_text())
    saved["model"]["head_dim"] = 32
    (four_steps / "config.yaml").write_text(yaml.safe_dump(saved))
    status, err = in_process(capsys, "evaluate", str(four_steps))
    assert status == 2 and "does not fit the model its run's config builds" in err and "size mismatch for head." in err


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def disk_full(state, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*step_00000004.pt \(No space left on device\); the "):
        pretrain(load_config(tiny(train={"max_steps": 4, "checkpoint_every": 2})), tmp_path / "run")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step_00000002.pt"]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["sessions"][-1]["error"]


# ---------------------------------------------------------------- several processes on one folder


@pytest.mark.distributed
def test_a_two_process_run_resumes_with_two_processes(tmp_path):
    config = tiny(train={"max_steps": 4, "batch_size": 16, "checkpoint_every": 2, "keep_checkpoints": 5})
    whole = tmp_path / "whole"
    assert run_worker(config, whole, nproc=2).returncode == 0
    stopped = tmp_path / "stopped"
    assert run_worker(config, stopped, nproc=2).returncode == 0
    checkpoint.checkpoint_path(stopped, 4).unlink()  # as if killed after step 2's checkpoint
    resumed = run_worker(config, stopped, "--resume", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max_difference(weights(stopped), weights(whole)) < 1e-6
    assert [r["step"] for r in logged_metrics(stopped)] == [1, 2, 3, 4]
    checkpoint.checkpoint_path(stopped, 4).unlink()
    one = run_worker(config, stopped, "--resume")
    assert one.returncode != 0 and "trained with 2 process(es) and is resumed with 1" in one.stderr
    allowed = run_worker(config, stopped, "--resume", "--allow-world-size-change")
    assert allowed.returncode == 0, allowed.stderr[-3000:]


@pytest.mark.distributed
def test_two_process_runs_always_end(tmp_path):
    """100 process groups torn down as the engine does, in two processes: none may deadlock (see
    ``process_group_released_last``; without it one of the first few runs hangs)."""
    stores = tmp_path / "stores"
    stores.mkdir()
    ended = torchrun(str(ROOT / "tests" / "teardown_worker.py"), str(stores), "100", timeout=240)
    assert ended.returncode == 0, ended.stderr[-3000:]
    assert ended.stdout.count(": 100 runs ended") == 2


@pytest.mark.distributed
def test_a_two_process_command_line_run_is_reported_and_evaluated_once(tmp_path):
    config = tmp_path / "tiny.yaml"
    train = {"max_steps": 2, "batch_size": 16, "output_dir": str(tmp_path), "run_name": "two"}
    config.write_text(yaml.safe_dump(tiny(train=train, eval={"tasks": ["knn"]})))
    done = torchrun("-m", "mmcl", "pretrain", str(config), "--evaluate", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder: ") == 1 and done.stdout.count("knn top1") == 1, done.stdout
    assert list(json.loads((tmp_path / "two" / "eval.json").read_text())) == ["step_00000002"]


def test_two_runs_into_one_run_name_at_once(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"max_steps": 8, "output_dir": str(tmp_path), "run_name": "same"})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmcl", "pretrain", str(config)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]  # fmt: skip
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in processes)
    assert [status for status, _ in outcomes] == [0, 2], outcomes
    assert "exists" in outcomes[1][1] or "in use by" in outcomes[1][1]
    assert [r["step"] for r in logged_metrics(tmp_path / "same")] == list(range(1, 9))


def test_a_run_folder_is_locked_while_it_trains(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"max_steps": 100000, "checkpoint_every": 1, "log_every": 1})))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen([sys.executable, str(WORKER), str(config), str(run_dir)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: checkpoint.latest_checkpoint(run_dir) is not None, timeout=120, poll=0.1)
        busy = cli("pretrain", str(run_dir), "--resume")
        assert busy.returncode == 2 and f"is in use by PID {trainer.pid} on host" in busy.stderr, busy.stderr
    finally:
        trainer.send_signal(signal.SIGINT)
        assert trainer.wait(timeout=120) == 130
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    (run_dir / ".lock.owner").write_text("PID 999999 on host gone since 2026-01-01\n")  # a lock left behind
    resumed = cli("pretrain", str(run_dir), "train.max_steps=" + str(_step(run_dir) + 1), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "took over the lock" in resumed.stderr and "PID 999999 on host gone" in resumed.stderr


def test_stale_temporary_files_are_removed_but_never_a_live_processs(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live, dead = folder / f"step_00000004.pt.{sleeper.pid}.tmp", folder / "step_00000002.pt.999999.tmp"
        live.write_bytes(b"half"), dead.write_bytes(b"half")
        checkpoint.save_checkpoint({"model": {}}, tmp_path, 6)
        assert live.exists() and not dead.exists()
    finally:
        sleeper.kill()


def _step(run_dir: Path) -> int:
    return int(checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run_dir))["step"])


# ---------------------------------------------------------------- kill -9 at any moment


def kill_campaign(tmp_path: Path, kills: int, seed: int) -> None:
    """Kill a run with SIGKILL at random moments (saves included), resume it each time; it ends as if never killed."""
    config = tiny(train={"max_steps": 40, "checkpoint_every": 1, "keep_checkpoints": 2, "log_every": 1})
    reference = tmp_path / "reference"  # uninterrupted, in a worker process too (the same thread count)
    assert run_worker(config, reference).returncode == 0
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir, rng = tmp_path / "run", random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for _ in range(kills):
        flags = ["--resume"] if checkpoint.latest_checkpoint(run_dir) else []
        process = subprocess.Popen([sys.executable, str(WORKER), str(config_file), str(run_dir), *flags], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(
            lambda p=process: checkpoint.latest_checkpoint(run_dir) is not None or p.poll() is not None,
            timeout=120,
            poll=0.1,
        )
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if process.returncode == 0:
            break
    finished = run_worker(config, run_dir, "--resume") if _step(run_dir) < 40 else None
    assert finished is None or finished.returncode == 0, finished.stderr[-3000:]
    assert _step(run_dir) == 40
    assert max_difference(weights(run_dir), weights(reference)) == 0.0  # bit-identical
    assert [r["step"] for r in logged_metrics(run_dir)] == list(range(1, 41))


def test_kill_9_at_random_moments_resumes_to_the_same_weights(tmp_path):
    kill_campaign(tmp_path, kills=3, seed=0)


@pytest.mark.slow
def test_kill_9_campaign_long(tmp_path):
    kill_campaign(tmp_path, kills=12, seed=1)


# ---------------------------------------------------------------- evaluation results kept


def test_evaluations_are_merged_never_overwritten(four_steps, capsys):
    assert in_process(capsys, "evaluate", str(four_steps), "--task", "knn")[0] == 0
    assert in_process(capsys, "evaluate", str(four_steps), "--task", "linear")[0] == 0
    assert in_process(capsys, "evaluate", str(four_steps), "--task", "knn", "--random-init")[0] == 0
    stored = json.loads((four_steps / "eval.json").read_text())
    assert set(stored) == {"step_00000004", "random_init"} and set(stored["step_00000004"]) == {"knn", "linear"}
    knn = stored["step_00000004"]["knn"]
    assert knn["options"] == {"k": 200, "temperature": 0.1} and knn["seed"] == 0
    assert knn["versions"]["torch"] == torch.__version__.split("+")[0] or knn["versions"]["torch"] == torch.__version__
    assert knn["checkpoint"].endswith("step_00000004.pt") and "evaluated" in knn
    assert mmcl.Run(four_steps).evaluations() == stored


def test_a_config_evaluated_as_built_keeps_its_folder_and_never_mixes_in_another_config(tmp_path):
    raw = tiny(train={"output_dir": str(tmp_path), "run_name": "as_built"}, eval={"tasks": ["knn"]})
    first = mmcl.evaluate(raw)
    again = mmcl.evaluate(raw, tasks=["linear"])
    assert first["run_dir"] == again["run_dir"] == str(tmp_path / "as_built")
    assert set(json.loads((tmp_path / "as_built" / "eval.json").read_text())["as_built"]) == {"knn", "linear"}
    other = {**raw, "optim": {**raw["optim"], "lr": 0.1}}
    with pytest.raises(ValueError, match=r"another config \(optim.lr: 0.5 there, 0.1 here\)"):
        mmcl.evaluate(other)


# ---------------------------------------------------------------- run metadata


def test_run_json_records_what_produced_the_run(tmp_path):
    run = mmcl.pretrain(tiny(train={"threads": 1, "output_dir": str(tmp_path)}))
    record = json.loads((run.folder / "run.json").read_text())
    assert record["status"] == "finished" and record["versions"]["mmcl"] == mmcl.__version__
    assert set(record["versions"]) >= {"torch", "torchvision", "transformers", "torch_geometric", "accelerate"}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if (ROOT / ".git").exists():
        assert record["git_commit"].startswith(head)
    session = record["sessions"][0]
    assert session["threads"] == 1 and session["world_size"] == 1 and session["device"] == "cpu"
    assert session["kind"] == "new" and session["started"] <= session["ended"] and session["at_step"] == 6
    assert isinstance(session["command"], list) and session["labels"] is None


# ---------------------------------------------------------------- configuration that says what it does


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.grad_clip=-1", "train.grad_clip=-1.0 must be > 0"),
        ("optim.min_lr_ratio=-5", "optim.min_lr_ratio=-5.0 must be in [0, 1]"),
        ("model.head_dim=0", "model.head_dim=0 must be >= 1"),
        ("train.max_steps=0", "train.max_steps=0 must be >= 1"),
        ("train.max_steps=-3", "train.max_steps=-3 must be >= 1"),
        ("train.log_every=0", "train.log_every=0 must be >= 1"),
        ("train.grad_accumulation=0", "train.grad_accumulation=0 must be >= 1"),
        ("optim.lr=0", "optim.lr=0.0 must be > 0"),
        ("optim.momentum=1", "optim.momentum=1.0 must be in [0, 1)"),
        ("data.crop_min_scale=0", "data.crop_min_scale=0.0 must be in (0, 1]"),
        ("eval.knn.k=0", "eval.knn.k=0 must be >= 1"),
        ("train.precision=fp16", "train.precision=fp16 with train.cpu=true: fp16 mixed precision needs a GPU"),
        ("optim.warmup_steps=6", "optim.warmup_steps=6 is not shorter than the run (train.max_steps=6)"),
        ("train.batch_size=[1,", "override 'train.batch_size=[1,': the value is not valid YAML"),
    ],
)
def test_out_of_range_options_are_refused_naming_key_value_and_range(override, message):
    with pytest.raises(ValueError) as error:
        load_config(tiny(), [override])
    assert message in str(error.value)


def test_warm_up_longer_than_an_epoch_based_run_is_refused(tmp_path):
    raw = tiny(train={"max_steps": None, "epochs": 2}, optim={"name": "sgd", "lr": 0.1, "warmup_steps": 8})
    with pytest.raises(ValueError, match=r"optim.warmup_steps=8 is not shorter than the run \(6 steps\)"):
        pretrain(load_config(raw), tmp_path / "run")


def test_a_warm_up_is_steps_or_a_ratio_and_an_override_of_one_replaces_the_files_other(caplog):
    with pytest.raises(ValueError, match=r"optim.warmup_steps=2 and optim.warmup_ratio=0.1 both set the warm-up"):
        load_config(tiny(optim={"warmup_steps": 2, "warmup_ratio": 0.1}))
    with pytest.raises(ValueError, match=r"optim.warmup_steps=2 and optim.warmup_ratio=0.1 both set the warm-up"):
        load_config(tiny(), ["optim.warmup_steps=2", "optim.warmup_ratio=0.1"])
    with pytest.raises(ValueError, match=r"optim.warmup_ratio=1.0 must be in \[0, 1\)"):
        load_config(tiny(), ["optim.warmup_ratio=1"])
    config = load_config("quickstart", ["optim.warmup_steps=0"])  # the quickstart states a ratio
    assert (config.optim.warmup_steps, config.optim.warmup_ratio) == (0, None)
    assert "optim.warmup_steps replaces the config's optim.warmup_ratio=0.065" in caplog.text
    config = load_config(tiny(optim={"warmup_steps": 2}), ["optim.warmup_ratio=0.5"])
    assert (config.optim.warmup_steps, config.optim.warmup_ratio) == (None, 0.5)


def test_the_quickstarts_warm_up_follows_a_short_run(tmp_path):
    """The quickstart's 10 warm-up steps of 150 are a ratio, so ``train.max_steps=3`` needs no second override."""
    run = mmcl.pretrain("quickstart", ["train.max_steps=3", "data.train_subset=64", "train.batch_size=32",
                                       "train.progress_bar=false", f"train.output_dir={tmp_path}"])  # fmt: skip
    session = json.loads((run.folder / "run.json").read_text())["sessions"][-1]
    assert (session["total_steps"], session["warmup_steps"]) == (3, 1)
    assert load_config("quickstart").optim.warmup_for(150) == 10  # the quickstart's 30 epochs of 5 steps, as before


def test_yaml_numbers_and_typed_values_are_read_as_meant():
    config = load_config(tiny(), ["optim.lr=3e-4", "optim.weight_decay=1.0e6", "data.augment=28"])
    assert config.optim.lr == 3e-4 and config.optim.weight_decay == 1e6 and config.data.augment == "28"


def test_switching_loss_name_drops_the_files_options_with_a_note(caplog):
    config = load_config("quickstart", ["loss.name=kcl"])
    assert config.loss == {"name": "kcl"}
    assert "loss.name=kcl does not take the config's loss option(s) ['temperature']" in caplog.text
    kept = load_config("quickstart", ["loss.name=dhel"])  # dhel takes a temperature: kept
    assert kept.loss == {"name": "dhel", "temperature": 0.5}
    with pytest.raises(ValueError, match="unknown option"):
        load_config("quickstart", ["loss.name=kcl", "loss.temperature=0.2"])  # given explicitly: refused


# ---------------------------------------------------------------- training health


def test_a_diverging_run_stops_naming_the_step_and_keeps_its_last_good_checkpoint(tmp_path):
    raw = tiny(optim={"name": "sgd", "lr": 1e30, "momentum": 0.0}, train={"max_steps": 6, "checkpoint_every": 1})
    with pytest.raises(
        NonFiniteError, match=r"step 2: the (embeddings are|loss is|gradients are) not finite; .*step_00000001"
    ):
        pretrain(load_config(raw), tmp_path / "run")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step_00000001.pt"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    skipping = tiny(optim={"name": "sgd", "lr": 1e30, "momentum": 0.0}, train={"on_nonfinite": "skip"})
    records = logged_metrics(pretrain(load_config(skipping), tmp_path / "skip"))
    assert records[-1]["step"] == 6 and records[-1]["skipped_steps"] == 5


def test_collapsed_embeddings_are_warned_about_and_healthy_ones_are_not(tmp_path):
    collapsed = pretrain(load_config(tiny(train={"max_steps": 8})), tmp_path / "collapsed")  # no batch norm: degenerate
    warnings = json.loads((collapsed / "run.json").read_text())["warnings"]
    assert len(warnings) == 1 and "embeddings look collapsed" in warnings[0]["message"]
    with_batch_norm = {"backbone_options": {"channels": [8, 16], "batch_norm": True}, "head_batch_norm": True}
    healthy = pretrain(load_config(tiny(model=with_batch_norm, optim={"name": "adamw", "lr": 1e-3},
                                        train={"max_steps": 8})), tmp_path / "healthy")  # fmt: skip
    assert "warnings" not in json.loads((healthy / "run.json").read_text())
    assert all(r["embedding_rank"] > 2 for r in logged_metrics(healthy))


# ---------------------------------------------------------------- honest protocols


def test_supervised_loss_on_items_the_evaluation_scores_is_refused(tmp_path):
    graph = {
        "modality": "graph",
        "model": {"hidden_dim": 8, "num_layers": 2},
        "data": {"source": "pyg", "dataset": "FakeDataset", "cache_dir": str(tmp_path / "cache"),
                 "dataset_options": {"num_graphs": 40, "avg_num_nodes": 6, "num_channels": 3, "num_classes": 2}},
        "loss": {"name": "supcon"},
        "train": {"max_steps": 2, "batch_size": 16, "cpu": True, "progress_bar": False, "output_dir": str(tmp_path)},
    }  # fmt: skip
    with pytest.raises(ValueError, match="the test folds' labels would shape the encoder.*train.allow_label_leak"):
        mmcl.pretrain(graph)
    allowed = mmcl.pretrain({**graph, "train": {**graph["train"], "allow_label_leak": True}})
    labels = json.loads((allowed.folder / "run.json").read_text())["sessions"][-1]["labels"]
    assert labels == "loss.name=supcon reads the class labels of data.dataset=FakeDataset"
    vision = mmcl.pretrain(tiny(loss={"name": "supcon"}, train={"output_dir": str(tmp_path)}))  # test split apart
    assert "digits" in json.loads((vision.folder / "run.json").read_text())["sessions"][-1]["labels"]


# ---------------------------------------------------------------- errors, not tracebacks


def test_user_errors_end_as_one_line_with_exit_status_2(tmp_path, capsys):
    status, err = in_process(capsys, "pretrain", "quickstart", "train.batch_size=[1,")
    assert status == 2 and err.startswith("mmcl: error: override 'train.batch_size=[1,'")
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    status, err = in_process(capsys, "pretrain", "quickstart", f"train.output_dir={blocked}")
    assert status == 2 and "cannot create the run folder" in err and "set train.output_dir" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    text = tmp_path / "text.yaml"
    text.write_text(yaml.safe_dump({"modality": "text", "data": {"path": str(empty)}, "train": {"cpu": True}}))
    status, err = in_process(capsys, "pretrain", str(text), f"train.output_dir={tmp_path / 'runs'}")
    assert status == 2 and f"data.path: {empty} is empty" in err
    assert "Traceback" not in err


def test_a_corrupt_image_names_its_file(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
    broken = tmp_path / "images" / "train" / "red" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    status, err = in_process(
        capsys, "pretrain", "quickstart", "data.dataset=imagefolder", f"data.root={tmp_path / 'images'}",
        "data.image_size=8", "train.batch_size=4", "train.max_steps=2", "optim.warmup_steps=0",
        f"train.output_dir={tmp_path / 'runs'}", "train.progress_bar=false",
    )  # fmt: skip
    assert status == 2 and f"cannot read the image {broken}" in err, err


def test_debug_shows_the_traceback(tmp_path):
    plain = cli("pretrain", "quickstart", "train.log_every=0")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = cli("--debug", "pretrain", "quickstart", "train.log_every=0")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "train.log_every=0 must be >= 1" in debug.stderr


# ---------------------------------------------------------------- data caches


@needs_mutag
def test_the_tu_cache_follows_its_source_files(tmp_path):
    from mmcl.modalities.graph import load_graphs

    root = tmp_path / "tu"
    shutil.copytree(TU_ROOT / "MUTAG", root / "MUTAG")
    raw = root / "MUTAG" / "raw" if (root / "MUTAG" / "raw").is_dir() else root / "MUTAG"
    assert load_graphs("MUTAG", str(root), str(tmp_path / "cache")).node_features == "labels"
    (raw / "MUTAG_node_labels.txt").unlink()
    rebuilt = load_graphs("MUTAG", str(root), str(tmp_path / "cache"))
    assert (rebuilt.node_features, rebuilt.num_features) == ("constant", 1)  # the deleted labels are gone
    indicator = raw / "MUTAG_graph_indicator.txt"
    indicator.write_text(indicator.read_text()[:2000])
    with pytest.raises(ValueError, match=r"TU dataset 'MUTAG': the files in .* are inconsistent"):
        load_graphs("MUTAG", str(root), str(tmp_path / "cache"))


def test_text_datasets_cache_under_data_cache_dir(tmp_path):
    from mmcl.modalities.text.data import load_table

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a sentence\nanother one\n")
    cache = tmp_path / "cache"
    table = load_table(str(sentences), None, cache_dir=str(cache))
    assert table["text"] == ["a sentence", "another one"] and any(cache.rglob("*.arrow"))
