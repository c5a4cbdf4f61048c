"""The training engine: configs, runs, resume, crash recovery, signals, 2-process equality, evaluation."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmcl.engine.config import load_config
from mmcl.engine.evaluate import build_encoder, evaluate_run
from mmcl.engine.trainer import pretrain
from mmcl.runs import checkpoints as checkpoint
from tests.test_distributed import torchrun

WORKER = Path(__file__).with_name("train_worker.py")
ROOT = WORKER.parent.parent

# A tiny model without batch-dependent layers (so several processes can equal one), digits views.
TINY = {
    "modality": "vision",
    "model": {
        "backbone": "small_cnn",
        "backbone_options": {"channels": [8, 16], "batch_norm": False},
        "head_dim": 16,
        "head_batch_norm": False,
    },
    "data": {"dataset": "digits", "train_subset": 96, "test_subset": 60},
    "loss": {"name": "nt_xent", "temperature": 0.5},
    "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
    "train": {"max_steps": 6, "batch_size": 32, "cpu": True, "progress_bar": False, "log_every": 1, "seed": 3},
    "eval": {"tasks": ["knn", "linear"], "linear": {"method": "logreg"}},
}


def tiny(**sections) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def weights(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    path = checkpoint.checkpoint_path(run_dir, step) if step else checkpoint.latest_checkpoint(run_dir)
    return checkpoint.load_checkpoint(path)["model"]


def logged_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def run_worker(
    config: dict, run_dir: Path, *flags: str, nproc: int = 1, timeout: int = 300
) -> subprocess.CompletedProcess:
    config_file = run_dir.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config))
    arguments = [str(WORKER), str(config_file), str(run_dir), *flags]
    if nproc > 1:
        return torchrun(*arguments, nproc=nproc, timeout=timeout)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=timeout, env=env)


def test_seed_device_draws_as_torch_manual_seed_on_the_cpu():
    from mmcl.contract import seed_device

    seed_device(123, torch.device("cpu"))
    drawn = torch.rand(5)
    torch.manual_seed(123)
    assert torch.equal(drawn, torch.rand(5))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted 6-step run (3 steps per epoch) that the other runs must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    pretrain(load_config(tiny(train={"checkpoint_every": 2, "keep_checkpoints": 5})), run_dir)
    return run_dir


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.widht=3"], "unknown key(s) ['widht'] in config section 'model'; valid keys: ['backbone',"),
        (["train.batch_size=abc"], "train.batch_size='abc' must be of type int"),
        (["train.precision=fp8"], "train.precision='fp8' is not one of ['no', 'fp16', 'bf16']"),
        (["optimizer.lr=1"], "unknown section 'optimizer'; valid sections: ['modality', 'model'"),
        (["loss.name=ntxent"], "ntxent"),
        (["loss.temprature=0.1"], "unknown option(s) ['temprature'] for loss 'nt_xent'"),
        (["loss.temperature=0"], "temperature"),
        (["modality=audio"], "unknown modality 'audio' (modality); available: ['graph', 'paired', 'text', 'vision']"),
        (
            ["eval.tasks=[knn, sts_b]"],
            "unknown evaluation task 'sts_b' (eval.tasks); available: ['graph_classification', 'knn', 'linear'",
        ),
        (["eval.knn.kk=3"], "unknown key(s) ['kk'] in config section 'eval.knn'; valid keys: ['k', 'temperature']"),
        (["eval.svm.C=1"], "unknown key(s) ['svm'] in config section 'eval'"),
        (["train.batch_size"], "must look like section.key=value"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ValueError) as error:
        load_config(tiny(), overrides=overrides)
    assert message in str(error.value)


def test_config_files_are_read_with_a_safe_loader(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(ValueError, match="is not valid YAML: could not determine a constructor"):
        load_config(evil)
    with pytest.raises(FileNotFoundError, match="is neither a file nor a packaged config"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_parse_yaml_values_and_nested_keys():
    raw = tiny()
    config = load_config(
        raw,
        overrides=[
            "loss.name=dhel",
            "loss.temperature=0.3",
            "train.grad_clip=1",
            "model.backbone_options.channels=[4, 8]",
            "eval.knn.k=5",
        ],
    )
    assert config.loss == {"name": "dhel", "temperature": 0.3}
    assert config.train.grad_clip == 1.0 and config.model.backbone_options["channels"] == [4, 8]
    assert config.eval.options["knn"].k == 5 and config.eval.options["knn"].temperature == 0.1
    assert raw == tiny(), "overrides must not edit the caller's dict"


def test_run_folder_holds_the_resolved_config_metrics_and_checkpoints(reference_run):
    saved = load_config(reference_run / "config.yaml")
    assert saved.to_dict() == load_config(tiny(train={"checkpoint_every": 2, "keep_checkpoints": 5})).to_dict()
    assert [int(p.stem.split("_")[1]) for p in checkpoint.list_checkpoints(reference_run)] == [2, 4, 6]
    records = logged_metrics(reference_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert {"loss", "lr", "pos_cos_mean", "neg_cos_mean", "tau"} <= records[0].keys()
    assert records[-1]["lr"] == 0.0  # cosine schedule ends at min_lr_ratio * lr
    assert any((reference_run / "tensorboard").rglob("events.out.tfevents.*"))


def test_training_changes_weights_and_is_deterministic(reference_run, tmp_path):
    again = tmp_path / "again"
    pretrain(load_config(tiny()), again)
    assert max_difference(weights(again), weights(reference_run)) == 0.0
    assert max_difference(weights(reference_run, 6), weights(reference_run, 2)) > 1e-3


def test_shuffle_once_keeps_the_batch_order_across_epochs():
    from mmcl.engine.trainer import EpochPermutation

    def orders(sampler):
        result = []
        for epoch in (0, 1):
            sampler.epoch = epoch
            result.append(list(sampler))
        return result

    every, once = orders(EpochPermutation(50, 3)), orders(EpochPermutation(50, 3, every_epoch=False))
    assert every[0] != every[1] and once[0] == once[1] == every[0]
    assert sorted(once[0]) == list(range(50))
    assert load_config(tiny(train={"shuffle": "once"})).train.shuffle == "once"
    with pytest.raises(ValueError, match="train.shuffle"):
        load_config(tiny(train={"shuffle": "never"}))


def test_shuffle_once_reaches_the_trainer(tmp_path):
    # SupCon with labels counts each anchor's same-class positives, which depend on the batch's items:
    # the per-step counts repeat across epochs exactly when the batches do
    def positives_per_epoch(shuffle: str) -> list[list[float]]:
        raw = tiny(loss={"name": "supcon", "temperature": 0.5},
                   train={"max_steps": None, "epochs": 2, "shuffle": shuffle})  # fmt: skip
        records = logged_metrics(pretrain(load_config(raw), tmp_path / shuffle))
        return [[r["pos_per_row_mean"] for r in records if r["epoch"] == epoch] for epoch in (0, 1)]

    once, every = positives_per_epoch("once"), positives_per_epoch("every_epoch")
    assert len(once[0]) == 3 and once[0] == once[1] == every[0]
    assert every[1] != every[0]


def test_keeping_the_last_batch_adds_a_smaller_step_per_epoch(tmp_path):
    # 96 items in batches of 40: with drop_last, 2 steps of 80 anchors (2 views); without, a third of 32
    config = load_config(tiny(train={"max_steps": None, "epochs": 2, "batch_size": 40, "drop_last": False}))
    run_dir = pretrain(config, tmp_path / "run")
    records = logged_metrics(run_dir)
    assert [(r["epoch"], r["n_anchors"]) for r in records] == [(0, 80), (0, 80), (0, 32), (1, 80), (1, 80), (1, 32)]
    assert records[-1]["lr"] == 0.0  # the schedule counts the extra steps


# ---------------------------------------------------------------- resume and crashes


@pytest.mark.parametrize("resume_from", [4, 3])  # mid-epoch and at an epoch boundary
def test_resume_equals_an_uninterrupted_run(reference_run, tmp_path, resume_from):
    run_dir = tmp_path / "run"
    config = load_config(tiny(train={"checkpoint_every": resume_from}))
    pretrain(config, run_dir)
    checkpoint.checkpoint_path(run_dir, 6).unlink()  # as if the run had stopped after step `resume_from`
    assert checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run_dir))["step"] == resume_from
    pretrain(config, run_dir, resume=True)
    assert max_difference(weights(run_dir), weights(reference_run)) < 1e-6


def test_a_run_killed_while_saving_resumes_from_the_previous_checkpoint(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny(train={"checkpoint_every": 2})
    crashed = run_worker(config, run_dir, "--crash-on-save", "2")  # dies half-way through writing step 4
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step_00000002.pt"]
    assert list((run_dir / "checkpoints").glob("*.tmp")), "the half-written file should be left as .tmp"
    resumed = run_worker(config, run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "step_00000002.pt" in resumed.stderr
    assert max_difference(weights(run_dir), weights(reference_run)) < 1e-6
    assert not list((run_dir / "checkpoints").glob("*.tmp")), "stale temporary files are cleaned up"


def test_sigint_saves_a_checkpoint_before_exiting(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny(train={"max_steps": 100000, "log_every": 1})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(config_file), str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    saved = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run_dir))
    assert saved["step"] >= 3 and f"stopped by signal at step {saved['step']}" in out


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        pretrain(load_config(tiny()), tmp_path / "empty", resume=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(tiny()))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        pretrain(load_config(tiny()), run_dir, resume=True)


# ---------------------------------------------------------------- several processes


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    """2 gloo processes with batch B each take the same steps as 1 process with batch 2B. The views are drawn per
    item (seeded by item), as views drawn on the device are seeded per (step, rank) and so depend on the split."""
    steps = {"max_steps": 4}
    per_item = {"augment_on": "loader"}
    two = tmp_path / "two"
    result = run_worker(tiny(data=per_item, train={**steps, "batch_size": 16}), two, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    pretrain(load_config(tiny(data=per_item, train={**steps, "batch_size": 32})), one)
    assert max_difference(weights(two), weights(one)) < 1e-5
    assert max_difference(weights(one), weights(one, None)) == 0.0
    logged = logged_metrics(two)
    single = logged_metrics(one)
    assert [r["loss"] for r in logged] == pytest.approx([r["loss"] for r in single], abs=1e-5)
    assert logged[0]["n_anchors"] == single[0]["n_anchors"] == 64
    kept = run_worker(
        tiny(data=per_item, train={**steps, "batch_size": 16, "drop_last": False}), tmp_path / "kept", nproc=2
    )
    assert kept.returncode != 0 and "train.drop_last=false needs a single process" in kept.stderr


# ---------------------------------------------------------------- evaluation


def test_evaluate_writes_json_and_beats_a_random_encoder_after_training(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny(
        data={"train_subset": None, "test_subset": None},
        optim={"name": "adamw", "lr": 3e-3},
        train={"max_steps": 30, "batch_size": 128},
    )
    pretrain(load_config(config), run_dir)
    trained = evaluate_run(run_dir)
    random_init = evaluate_run(run_dir, random_init=True)
    stored = json.loads((run_dir / "eval.json").read_text())
    assert stored["step_00000030"]["knn"]["top1"] == trained["knn"]["top1"]
    assert stored["random_init"]["linear"]["top1"] == random_init["linear"]["top1"]
    scores = {
        name: (r["knn"]["top1"], r["linear"]["top1"]) for name, r in (("trained", trained), ("random", random_init))
    }
    assert trained["linear"]["top1"] > random_init["linear"]["top1"] + 3, scores
    assert trained["knn"]["n_test"] == 360 and trained["knn"]["k"] == 200


def test_bf16_autocast_and_gradient_clipping(reference_run, tmp_path):
    clipped = tmp_path / "clipped"
    config = load_config(tiny(train={"max_steps": 2, "precision": "bf16", "grad_clip": 1e-5}))
    pretrain(config, clipped)
    records = logged_metrics(clipped)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    initial = build_encoder(config, None)[0].state_dict()
    # SGD (lr <= 0.5, momentum 0.9) on gradients of norm <= 1e-5 moves the weights by at most 0.5e-5 * (1 + 1.9)
    assert 0 < max_difference(weights(clipped), initial) <= 1.45e-5
    assert max_difference(weights(reference_run, 2), initial) > 1e-3


def test_gradient_caching_takes_the_same_steps(reference_run, tmp_path):
    cached = tmp_path / "cached"
    pretrain(load_config(tiny(train={"grad_cache_chunk": 20})), cached)  # 64 rows: chunks of 20, 20, 20, 4
    assert max_difference(weights(cached), weights(reference_run)) < 1e-6
    with pytest.raises(ValueError, match="grad_cache_chunk needs an encoder without batch-dependent layers"):
        batch_norm = tiny(model={"head_batch_norm": True}, train={"grad_cache_chunk": 20})
        pretrain(load_config(batch_norm), tmp_path / "bn")


def test_validate_every_needs_a_modality_with_a_validation_metric(tmp_path):
    with pytest.raises(ValueError, match="the vision modality has no validation of its own; name one with eval.valid"):
        pretrain(load_config(tiny(train={"validate_every": 1})), tmp_path / "run")


@pytest.mark.parametrize(
    "modality, data",
    [
        ("vision", {"augment_on": "device"}),
        ("vision", {"augment_on": "loader"}),
        ("graph", {"augment_on": "device"}),
        ("graph", {"augment_on": "loader"}),
    ],
)
def test_items_are_seeded_exactly_when_they_draw_random_numbers(modality, data, tmp_path):
    """The engine seeds each item only where ``items_are_random``: an adapter that says its items draw nothing
    must give the same item whatever the generator's state, and one that draws must be seeded to repeat."""
    from mmcl.engine.config import build_adapter
    from tests.test_graph import TU_ROOT

    if modality == "vision":
        config = load_config(tiny(data=data))
    elif not TU_ROOT.exists():
        pytest.skip(f"the TU datasets are not at {TU_ROOT}")
    else:
        overrides = [f"data.root={TU_ROOT}", f"data.cache_dir={tmp_path}", f"data.augment_on={data['augment_on']}"]
        config = load_config("graph/mutag", overrides)
    adapter = build_adapter(config)
    dataset = adapter.train_dataset()

    def item(state: int):
        torch.manual_seed(state)
        value = dataset[3][0]
        return [v.x if hasattr(v, "x") else v for v in value] if isinstance(value, list) else value

    def same(a, b) -> bool:
        if isinstance(a, list):
            return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))

    unseeded_equal = all(same(item(1), item(state)) for state in (2, 3, 4))
    assert unseeded_equal == (not adapter.items_are_random)


def test_the_trained_encoder_scores_as_its_run_folder_does(tmp_path):
    """A study cell evaluates the trainer's own encoder and adapter right after training (nothing rebuilt or read
    again): the results equal an evaluation of the run folder, value for value."""
    from mmcl.engine.config import config_from_dict
    from mmcl.engine.evaluate import evaluate_and_record
    from mmcl.engine.trainer import train

    raw = tiny(train={"output_dir": str(tmp_path), "run_name": "r"}, eval={"tasks": ["knn", "linear", "metrics"]})
    config = config_from_dict(raw)
    trained = train(config)
    assert trained.checkpoint == checkpoint.checkpoint_path(trained.folder, 6)
    in_memory = evaluate_and_record(config, trained.folder, trained.encoder, trained.adapter, trained.checkpoint)
    from_folder = evaluate_run(trained.folder)
    for task in ("knn", "linear", "metrics"):
        assert {k: v for k, v in in_memory[task].items() if k != "seconds"} == {
            k: v for k, v in from_folder[task].items() if k != "seconds"
        }, task
    assert in_memory["checkpoint"] == from_folder["checkpoint"] and in_memory["encoder"] == "pretrained"
