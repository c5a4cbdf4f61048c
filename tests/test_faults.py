"""Nothing lost, nothing outside its folder: one regression test per fault of the issue of that name (the run and
study faults a hostile test found), with real processes, real kills and real damaged files where the fault is one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mmcl
from mmcl.runs import checkpoints
from tests.processes import wait_for
from tests.test_engine import ROOT, max_difference, tiny, weights


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcl", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)  # fmt: skip


def write_config(folder: Path, **sections) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny(**sections)))
    return path


TINY_DIGITS = ["train.max_steps=2", "optim.warmup_steps=0", "data.train_subset=64", "data.test_subset=40",
               "train.batch_size=32", "eval.tasks=[knn]", "eval.knn.k=5", "eval.metrics.pairs=32"]  # fmt: skip
STUDY = {"name": "s", "seeds": [0], "losses": ["nt_xent"],
         "tasks": [{"name": "digits", "config": "quickstart", "overrides": TINY_DIGITS}]}  # fmt: skip


# ---------------------------------------------------------------- 1. writes outside the folders a user names


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/abs/path", "~/x", "a\\b", "."])
def test_a_run_name_never_leaves_the_output_folder(name, tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    config = write_config(inner)
    result = cli("pretrain", str(config), f"train.run_name={name}", "train.output_dir=out", cwd=inner)
    assert result.returncode == 2 and "train.run_name=" in result.stderr and "plain name" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner"] and sorted(os.listdir(inner)) == ["tiny.yaml"]


@pytest.mark.parametrize("where", ["task", "label"])
def test_a_study_task_name_or_loss_label_never_leaves_the_study_folder(where):
    from mmcl.compare.study import read_study

    escape = "../../escape"
    task = {"name": escape if where == "task" else "digits", "config": "quickstart"}
    loss = {"name": "nt_xent", "label": escape} if where == "label" else "nt_xent"
    with pytest.raises(ValueError, match=r"is not a plain name inside its folder \('/' is not allowed\)"):
        read_study({"name": "s", "seeds": [0], "losses": [loss], "tasks": [task]})


def test_an_export_names_only_files_inside_itself(tmp_path):
    from mmcl.contract.names import inside

    assert inside(tmp_path, "1_Pooling/model.safetensors", "mlp_file") == tmp_path / "1_Pooling" / "model.safetensors"
    for name in ("../../../../x.safetensors", "/etc/passwd", "~/x"):
        with pytest.raises(ValueError, match="mlp_file="):
            inside(tmp_path, name, "mlp_file")


def test_the_model_card_quotes_the_run_folder_in_its_code(tmp_path):
    import ast
    import re

    run = mmcl.pretrain(tiny(train={"output_dir": str(tmp_path), "run_name": 'it\'s "quoted"'}))
    card = (run.folder / "model" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert blocks and all(ast.parse(block) for block in blocks)
    assert f"mmcl.load_encoder({str(run.folder / 'model')!r})" in card


# ---------------------------------------------------------------- 2. checkpoint rotation keeps readable checkpoints


def test_rotation_keeps_the_newest_readable_checkpoints_and_the_one_just_written(tmp_path):
    run = mmcl.pretrain(tiny(train={"max_steps": 5, "checkpoint_every": 1, "keep_checkpoints": 5,
                                    "output_dir": str(tmp_path), "run_name": "r"})).folder  # fmt: skip
    for step in (4, 5):  # the two newest cut short (a full disk)
        path = checkpoints.checkpoint_path(run, step)
        path.write_bytes(path.read_bytes()[:100])
    mmcl.pretrain(run, ["train.max_steps=6", "train.keep_checkpoints=1", "train.checkpoint_every=1"], resume=True)
    names = [p.name for p in checkpoints.list_checkpoints(run)]
    assert names == ["step_00000006.pt"], names  # 4 and 5 rewritten on the way, each retired by the next
    assert checkpoints.is_readable(checkpoints.checkpoint_path(run, 6))


def test_a_kill_right_after_a_save_with_unreadable_newer_checkpoints_loses_nothing(tmp_path):
    run = mmcl.pretrain(tiny(train={"max_steps": 5, "checkpoint_every": 1, "keep_checkpoints": 5,
                                    "output_dir": str(tmp_path), "run_name": "r"})).folder  # fmt: skip
    for step in (4, 5):
        path = checkpoints.checkpoint_path(run, step)
        path.write_bytes(path.read_bytes()[:100])
    state = checkpoints.load_checkpoint(checkpoints.checkpoint_path(run, 3))
    checkpoints.save_checkpoint({**state, "step": 4}, run, 4, keep=1)  # what step 4 of the resumed run saves
    names = [p.name for p in checkpoints.list_checkpoints(run)]
    assert names == ["step_00000004.pt", "step_00000005.pt"], names  # 3 retired; 5 waits to be overwritten
    assert checkpoints.load_newest_readable(checkpoints.list_checkpoints(run)[::-1])[0].name == "step_00000004.pt"


# ---------------------------------------------------------------- 3. bit-exact resume with gradient accumulation


def test_resume_with_gradient_accumulation_is_bit_exact(tmp_path):
    """96 items in batches of 32 with 2 micro-batches a step: 2 optimiser steps an epoch (the last of one
    micro-batch), so an epoch is not len(loader) // accumulation steps long."""
    config = {"max_steps": 6, "grad_accumulation": 2, "checkpoint_every": 1, "keep_checkpoints": 10}
    whole = mmcl.pretrain(tiny(train={**config, "output_dir": str(tmp_path), "run_name": "whole"})).folder
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for path in checkpoints.list_checkpoints(cut)[3:]:  # keep steps 1-3: resume in the middle of the second epoch
        path.unlink()
    mmcl.pretrain(cut, resume=True)
    assert max_difference(weights(whole), weights(cut)) == 0.0
    logged = {r["step"]: r for r in mmcl.Run(whole).metrics()}
    resumed = {r["step"]: r for r in mmcl.Run(cut).metrics()}
    assert [logged[s]["epoch"] for s in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert all(resumed[s]["loss"] == logged[s]["loss"] and resumed[s]["epoch"] == logged[s]["epoch"] for s in logged)


# ---------------------------------------------------------------- 5/6. a run that never started can start again


@pytest.mark.parametrize("auto_resume", [True, False])
def test_a_run_killed_before_its_first_checkpoint_starts_again_under_its_name(auto_resume, tmp_path):
    config = write_config(tmp_path, train={"max_steps": 100000, "log_every": 1})
    run = ["pretrain", str(config), "train.run_name=r", f"train.output_dir={tmp_path}", "train.loggers=[]"]
    process = subprocess.Popen([sys.executable, "-m", "mmcl", *run], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(
        lambda: (tmp_path / "r" / "metrics.jsonl").is_file() and (tmp_path / "r" / "metrics.jsonl").stat().st_size,
        timeout=120,
        poll=0.05,
    )
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not checkpoints.list_checkpoints(tmp_path / "r")
    again = cli(*run, "train.max_steps=3", f"train.auto_resume={str(auto_resume).lower()}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "held a run that never saved a checkpoint" in again.stderr
    assert [r["step"] for r in mmcl.Run(tmp_path / "r").metrics()] == [1, 2, 3]


@pytest.mark.parametrize(
    "wrong, message",
    [
        ("data.dataset=nope", "unknown image dataset 'nope'"),
        ("train.batch_size=5000", "train.batch_size=5000 is larger than the dataset"),
        ("model.backbone_options={chanels: [8]}", "unknown option(s) ['chanels'] for backbone"),
        ("loss.name=supcon", "reads the class labels"),  # on graphs, whose evaluation scores the same items
        ("data.root=null", "data.root is not set"),
    ],
)
def test_set_up_errors_are_found_before_the_run_folder_exists(wrong, message, tmp_path):
    graph = wrong.startswith(("loss.name", "data.root"))
    if graph and not (ROOT.parent / "shared" / "data" / "tu" / "MUTAG").is_dir():
        pytest.skip("the shared TU data are absent")
    base = ["graph/mutag", f"data.root={ROOT.parent / 'shared' / 'data' / 'tu'}", "train.max_steps=2",
            f"data.cache_dir={tmp_path / 'cache'}"] if graph else [str(write_config(tmp_path))]  # fmt: skip
    run = ["pretrain", *base, "train.run_name=r", f"train.output_dir={tmp_path / 'runs'}", "train.loggers=[]"]
    failed = cli(*run, wrong)
    assert failed.returncode == 2 and message in failed.stderr, failed.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
    corrected = cli(*run)
    assert corrected.returncode == 0, corrected.stderr[-2000:]


def test_a_run_that_failed_at_its_first_steps_starts_again_under_its_name(tmp_path):
    config = write_config(tmp_path)
    run = ["pretrain", str(config), "train.run_name=r", f"train.output_dir={tmp_path}"]
    diverged = cli(*run, "optim.lr=1e30")
    assert diverged.returncode == 2 and "not finite" in diverged.stderr
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "failed"
    corrected = cli(*run)
    assert corrected.returncode == 0 and "never saved a checkpoint (failed: NonFiniteError" in corrected.stderr
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert [s["status"] for s in record["sessions"]] == ["failed", "finished"] and record["status"] == "finished"
    refused = cli(*run)  # now it holds a trained run: never restarted
    assert refused.returncode == 2 and "exists: continue it with" in refused.stderr


# ---------------------------------------------------------------- 7. nothing written before a resume fails


@pytest.fixture
def finished(tmp_path) -> Path:
    return mmcl.pretrain(tiny(train={"max_steps": 4, "checkpoint_every": 2, "output_dir": str(tmp_path),
                                     "run_name": "r", "loggers": []})).folder  # fmt: skip


def test_a_metrics_line_cut_short_at_the_end_is_dropped_with_a_note(finished, caplog):
    path = finished / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 5, "lo')  # what a full disk leaves
    mmcl.pretrain(finished, ["train.max_steps=6"], resume=True)
    assert "its last line is cut short" in caplog.text
    assert [r["step"] for r in mmcl.Run(finished).metrics()] == [1, 2, 3, 4, 5, 6]


def test_a_damaged_run_json_refuses_the_resume_before_anything_is_written(finished):
    (finished / "run.json").write_text('{"sessions": [')
    before = {name: (finished / name).read_bytes() for name in ("config.yaml", "run.json", "metrics.jsonl")}
    with pytest.raises(ValueError, match=r"run.json is damaged .*move it aside"):
        mmcl.pretrain(finished, ["train.max_steps=6"], resume=True)
    assert {name: (finished / name).read_bytes() for name in before} == before


@pytest.mark.distributed
def test_a_one_process_run_resumed_with_two_is_refused_before_anything_is_written(finished):
    from tests.test_distributed import torchrun

    before = {name: (finished / name).read_bytes() for name in ("config.yaml", "run.json", "metrics.jsonl")}
    result = torchrun("-m", "mmcl", "pretrain", str(finished), "--resume", "train.max_steps=6", timeout=300)
    assert result.returncode != 0 and "trained with 1 process(es) and is resumed with 2" in result.stderr
    assert {name: (finished / name).read_bytes() for name in before} == before
    assert json.loads((finished / "run.json").read_text())["status"] == "finished"


# ---------------------------------------------------------------- 8. hangs and tracebacks


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_jobs_below_one_is_refused_before_the_study_folder_exists(jobs, tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STUDY))
    result = cli("compare", "s.yaml", "--output", "out", "--jobs", jobs, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and f"--jobs {jobs}: run at least one cell at a time" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["modality.foo=1"], "modality is a value ('vision'), not a section"),
        (["train=5", "train.max_steps=3"], "train is a value (5), not a section"),
        ([f"optim.lr={10**400}"], "optim.lr=100000000000...(401 digits) is too large for a number"),
        ([f"loss.temperature={10**400}"], "loss.temperature=100000000000...(401 digits) is too large"),
        (["optim.lr=1e400"], "optim.lr=inf must be a finite number"),
        (["loss.temperature=.inf"], "loss.temperature=inf must be a finite number"),
        (["loss.temperature={rule: dystress, tau_min: .nan, tau_max: 0.2}"], "loss.temperature.tau_min=nan"),
        ([f"train.seed={2**64}"], "train.seed=18446744073709551616 must be in [0, 4294967295]"),
    ],
)
def test_bad_overrides_end_in_one_line_naming_the_key(overrides, message, tmp_path):
    result = cli("pretrain", str(write_config(tmp_path)), *overrides, f"train.output_dir={tmp_path / 'runs'}")
    assert result.returncode == 2 and result.stderr.startswith("mmcl: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_a_study_with_a_bad_override_or_seed_is_refused_when_read():
    from mmcl.compare.study import read_study

    study = {"name": "s", "seeds": [0], "losses": ["nt_xent"], "tasks": [{"name": "d", "config": "quickstart"}]}
    with pytest.raises(ValueError, match="modality is a value"):
        read_study({**study, "tasks": [{"name": "d", "config": "quickstart", "overrides": ["modality.foo=1"]}]})
    with pytest.raises(ValueError, match=r"seeds\[1\]=4294967296 must be in \[0, 4294967295\]"):
        read_study({**study, "seeds": [0, 2**32]})


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("modality: vision\n# caf\xe9\n".encode("latin-1"))
    result = cli("pretrain", str(path))
    assert result.returncode == 2 and f"config file {path} is not UTF-8 text (byte 0xe9" in result.stderr


# ---------------------------------------------------------------- 9. results that mislead


def test_skipped_steps_log_no_diagnostics_they_did_not_measure(tmp_path):
    run = mmcl.pretrain(tiny(optim={"lr": 1e30}, train={"max_steps": 4, "on_nonfinite": "skip",
                                                        "output_dir": str(tmp_path), "run_name": "r"}))  # fmt: skip
    lines = run.metrics()
    assert "pos_cos_mean" in lines[0] and "skipped" not in lines[0]
    skipped = [line for line in lines if line.get("skipped")]
    assert skipped and all("pos_cos_mean" not in line and "embedding_rank" not in line for line in skipped)
    assert [line["skipped_steps"] for line in skipped] == list(range(1, len(skipped) + 1))


def test_retry_failed_counts_each_failed_cell_once(tmp_path):
    failing = {**STUDY, "tasks": [{**STUDY["tasks"][0], "overrides": [*STUDY["tasks"][0]["overrides"],
                                                                      "optim.lr=1e30", "optim.name=sgd"]}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(failing))
    first = cli("compare", "s.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
    retried = cli("compare", "s.yaml", "--output", "out", "--no-plots", "--retry-failed", cwd=tmp_path)
    assert "1 cell(s) failed" in first.stdout and "1 cell(s) failed" in retried.stdout, retried.stdout


def test_two_studies_into_one_folder_at_once_are_refused(tmp_path):
    long = {**STUDY, "tasks": [{**STUDY["tasks"][0], "overrides": [*STUDY["tasks"][0]["overrides"][1:],
                                                                   "train.max_steps=400"]}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(long))
    first = subprocess.Popen([sys.executable, "-m", "mmcl", "compare", "s.yaml", "--output", "out", "--no-plots"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "out" / "specs").is_dir(), timeout=120, poll=0.05)
        second = cli("compare", "s.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
        assert second.returncode == 2 and f"study folder out is in use by PID {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------- 10. signals during set-up


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_set_up_leaves_a_clean_folder_that_starts_again(sig, tmp_path):
    config = write_config(tmp_path, train={"max_steps": 3})
    run = ["pretrain", str(config), "train.run_name=r", f"train.output_dir={tmp_path}", "train.loggers=[tensorboard]"]
    process = subprocess.Popen([sys.executable, "-m", "mmcl", *run], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: (tmp_path / "r" / ".lock.owner").is_file() or process.poll() is not None, timeout=120, poll=0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived (a very fast machine)")
    assert process.returncode == 130 and err.strip().startswith("mmcl: ") and err.strip() != "mmcl:", err
    assert not list((tmp_path / "r").rglob("*.tmp"))
    record = tmp_path / "r" / "run.json"
    assert not record.exists() or json.loads(record.read_text())["status"] != "running"
    again = cli(*run)
    assert again.returncode == 0, again.stderr[-2000:]


# ---------------------------------------------------------------- 11. errors that name the file, key and fix


def test_a_damaged_eval_json_is_moved_aside_and_the_new_evaluation_kept(finished):
    (finished / "eval.json").write_text("{not json")
    results = mmcl.evaluate(finished, tasks=["knn"])
    kept = json.loads((finished / "eval.json").read_text())
    assert kept["step_00000004"]["knn"]["top1"] == results["knn"]["top1"]
    (aside,) = finished.glob("eval.json.damaged-*")
    assert aside.read_text() == "{not json"


def test_evaluating_non_finite_weights_names_the_checkpoint(finished):
    path = checkpoints.latest_checkpoint(finished)
    state = torch.load(path, weights_only=True)
    next(iter(state["model"].values())).fill_(float("nan"))
    torch.save(state, path)
    result = cli("evaluate", str(finished))
    assert result.returncode == 2 and f"checkpoint {path} holds non-finite weights" in result.stderr


def test_graph_labels_missing_are_named(tmp_path):
    source = ROOT.parent / "shared" / "data" / "tu" / "MUTAG" / "raw"
    if not source.is_dir():
        pytest.skip("the shared TU data are absent")
    raw = tmp_path / "tu" / "MUTAG" / "raw"
    shutil.copytree(source, raw)
    (raw / "MUTAG_graph_labels.txt").unlink()
    result = cli("pretrain", "graph/mutag", f"data.root={tmp_path / 'tu'}", f"data.cache_dir={tmp_path / 'cache'}",
                 "train.max_steps=2", f"train.output_dir={tmp_path / 'runs'}", "--evaluate")  # fmt: skip
    assert (
        result.returncode == 2 and "needs graph labels" in result.stderr and "MUTAG_graph_labels.txt" in result.stderr
    )


@pytest.mark.parametrize("target", ["a_file", "missing"])
def test_report_of_a_file_or_a_missing_folder_is_refused_without_writing(target, tmp_path):
    (tmp_path / "a_file").write_text("x")
    result = cli("compare", "--report", target, cwd=tmp_path)
    assert result.returncode == 2 and f"--report {target}: no such study folder" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_a_tampered_export_is_a_clear_error(finished):
    manifest = finished / "model" / "mmcl_export.json"
    content = json.loads(manifest.read_text())
    del content["head"]
    manifest.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"export .*model is damaged: its mmcl_export.json lacks or mangles"):
        mmcl.load_encoder(finished / "model")


# ---------------------------------------------------------------- 13. promises


def test_a_paired_run_writes_its_model_and_loads_it_back(tmp_path):
    pytest.importorskip("rdkit", reason="the molecule data need RDKit (pip install mmcl[molecules])")
    from tests.test_paired import _demo_overrides
    from tests.test_text import build_tiny_model

    overrides = _demo_overrides(build_tiny_model(tmp_path / "bert"), tmp_path)
    run = mmcl.pretrain("paired/molecules_text", [*overrides, "train.max_steps=2"])
    export = run.folder / "model"
    manifest = json.loads((export / "mmcl_export.json").read_text())
    assert manifest["modality"] == "paired" and {t["modality"] for t in manifest["towers"].values()} == {
        "graph",
        "text",
    }
    loaded, trained = mmcl.load_encoder(export), mmcl.load_encoder(run)
    for name in ("a", "b"):
        for key, value in trained.tower(name).state_dict().items():
            torch.testing.assert_close(loaded.tower(name).state_dict()[key], value, msg=f"{name}.{key}")
    assert (export / "README.md").is_file()


def test_the_study_docstring_example_is_a_valid_study():
    import textwrap

    from mmcl.compare import study

    example = yaml.safe_load(textwrap.dedent(study.__doc__.split("::\n\n", 1)[1].split("\n\n")[0]))
    assert example["tasks"][0]["overrides"] == ["data.root=${DATA}/tu"]
    example.pop("claims")
    assert len(study.read_study(example, {"DATA": "/data"}).cells()) == 9
