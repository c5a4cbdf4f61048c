"""The paired modality (two towers), CLIP's learned temperature, the retrieval task and the molecule-text demo."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mmcl
from mmcl import losses
from mmcl.engine.config import load_config
from mmcl.engine.trainer import pretrain
from mmcl.losses.parts import LearnableTemperature
from mmcl.tasks.retrieval import retrieval_metrics
from tests.test_engine import logged_metrics, max_difference, run_worker, tiny, weights

# ---------------------------------------------------------------- learnable temperature


def _clip_reference(u: torch.Tensor, v: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss as open_clip's ClipLoss writes it: logits = exp(t) u v^T, symmetric cross-entropy."""
    u, v = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
    logits = log_scale.exp() * u @ v.T
    target = torch.arange(u.shape[0])
    ce = torch.nn.functional.cross_entropy
    return (ce(logits, target) + ce(logits.T, target)) / 2


@pytest.mark.parametrize("init", [0.07, 0.5])
def test_learnable_temperature_gradient_equals_the_hand_written_clip_loss(init):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 8, generator=g, dtype=torch.float64), torch.randn(12, 8, generator=g, dtype=torch.float64)
    loss_fn = losses.build("clip", temperature={"rule": "learnable", "init": init}).double()
    u1, v1 = u.clone().requires_grad_(), v.clone().requires_grad_()
    loss = loss_fn(u1, v1)
    loss.backward()
    t = loss_fn.temperature.log_scale.detach().clone().requires_grad_()  # log(1 / init), as stored
    assert t.item() == pytest.approx(math.log(1 / init), rel=1e-7)
    u2, v2 = u.clone().requires_grad_(), v.clone().requires_grad_()
    reference = _clip_reference(u2, v2, t)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)
    assert loss_fn.temperature.log_scale.grad.item() == pytest.approx(t.grad.item(), abs=1e-12)
    assert torch.allclose(u1.grad, u2.grad, atol=1e-12) and torch.allclose(v1.grad, v2.grad, atol=1e-12)
    assert float(loss_fn.diagnostics["tau"]) == pytest.approx(init)


def test_learnable_temperature_clamps_as_open_clip():
    rule = LearnableTemperature(init=0.07, max_logit_scale=100)
    assert rule.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        rule.log_scale.fill_(6.0)  # past log(100) = 4.605
    tau = rule(torch.zeros(()), torch.zeros(3))
    assert tau.item() == pytest.approx(0.01)  # the forward pass clamps out of place
    rule.constrain_()  # open_clip: logit_scale.clamp_(0, math.log(100)) after the step
    assert rule.log_scale.item() == pytest.approx(math.log(100))
    rule.log_scale.grad = None
    rule(torch.zeros(()), torch.zeros(3)).backward()  # at the bound the gradient still flows, as in open_clip
    assert rule.log_scale.grad.item() == pytest.approx(-0.01)
    with torch.no_grad():
        rule.log_scale.fill_(-1.0)
    rule.constrain_()
    assert rule.log_scale.item() == 0.0  # logit scale >= 1, tau <= 1
    with pytest.raises(ValueError, match=r"init=0.001 gives the logit scale 1/init = 1000"):
        LearnableTemperature(init=0.001)


@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "dhel", "hcl"])
def test_every_loss_taking_a_temperature_can_learn_it(name):
    loss_fn = losses.build(name, temperature="learnable", blockwise=True)
    with pytest.warns(UserWarning, match="learnable temperature"):
        loss_fn(torch.randn(8, 4), torch.randn(8, 4)).backward()
    assert loss_fn.temperature.log_scale.grad is not None


def test_clip_negatives_switch_chooses_the_layout():
    u, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    for negatives, reference in [("cross", "info_nce"), ("within", "dhel"), ("both", "nt_xent")]:
        ours = losses.build("clip", negatives=negatives, temperature=0.2)(u, v)
        assert ours.item() == pytest.approx(losses.build(reference, temperature=0.2)(u, v).item(), abs=1e-12)


def test_engine_trains_checkpoints_and_resumes_the_temperature(tmp_path):
    config = tiny(
        loss={"name": "clip", "temperature": "learnable"},
        optim={"name": "adamw", "lr": 0.05, "weight_decay": 0.5, "schedule": "constant"},
    )
    run_dir = tmp_path / "run"
    pretrain(load_config(config), run_dir)
    taus = [record["tau"] for record in logged_metrics(run_dir)]
    assert taus[0] != taus[-1] and all(0.01 <= t <= 1 for t in taus)  # learned, logged, inside the clamp
    state = torch.load(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    saved = state["loss"]["temperature.log_scale"].item()  # after the last step's update
    assert math.log(1) <= saved <= math.log(100) and saved != pytest.approx(math.log(1 / 0.07), abs=1e-4)
    groups = state["optimizer"]["param_groups"]
    assert groups[-1]["weight_decay"] == 0.0 and len(groups[-1]["params"]) == 1  # no weight decay on it
    # resume from step 3: the same trajectory
    half = tmp_path / "half"
    short = tiny(
        loss={"name": "clip", "temperature": "learnable"},
        optim={"name": "adamw", "lr": 0.05, "weight_decay": 0.5, "schedule": "constant"},
        train={"max_steps": 3},
    )
    pretrain(load_config(short), half)
    pretrain(load_config(config), half, resume=True)
    assert [r["tau"] for r in logged_metrics(half)] == pytest.approx(taus, abs=1e-7)
    resumed = torch.load(sorted((half / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    assert resumed["loss"]["temperature.log_scale"].item() == pytest.approx(saved, abs=1e-7)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_learn_the_temperature_as_one_process_on_the_global_batch(tmp_path):
    config = {"loss": {"name": "clip", "temperature": "learnable"}, "data": {"augment_on": "loader"}}
    two = tmp_path / "two"
    result = run_worker(tiny(**config, train={"max_steps": 4, "batch_size": 16}), two, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    pretrain(load_config(tiny(**config, train={"max_steps": 4, "batch_size": 32})), one)
    assert [r["tau"] for r in logged_metrics(two)] == pytest.approx([r["tau"] for r in logged_metrics(one)], abs=1e-6)
    assert logged_metrics(one)[-1]["tau"] != pytest.approx(0.07, abs=1e-6)
    assert max_difference(weights(two), weights(one)) < 1e-5


# ---------------------------------------------------------------- retrieval metrics


def test_retrieval_metrics_on_a_hand_computed_example():
    # 3 pairs; a -> b: query 0 ranks its match 1st, query 1 2nd, query 2 3rd.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]], dtype=torch.float64)
    result = retrieval_metrics(a, b, ks=(1, 2))
    assert result["a_to_b"] == pytest.approx(
        {"recall@1": 100 / 3, "recall@2": 200 / 3, "mrr": 100 * (1 + 1 / 2 + 1 / 3) / 3}
    )
    assert result["chance"] == pytest.approx({"recall@1": 100 / 3, "recall@2": 200 / 3, "mrr": 100 * (11 / 6) / 3})
    # ties: two identical candidates level with the match count half a hit at k = 1 and 1/r averaged over r = 1, 2
    tied = retrieval_metrics(torch.eye(2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64), ks=(1,))
    assert tied["a_to_b"] == pytest.approx({"recall@1": 50.0, "mrr": 75.0})


def _brute_force(queries: torch.Tensor, candidates: torch.Tensor, ks) -> dict:
    """Every tie order enumerated: the mean over the orders of the tied candidates of the match's rank statistics."""
    import itertools

    q = queries / queries.norm(dim=1, keepdim=True)
    c = candidates / candidates.norm(dim=1, keepdim=True)
    hits, rr = {k: 0.0 for k in ks}, 0.0
    for i in range(len(q)):
        scores = [float(q[i] @ c[j]) for j in range(len(c))]
        above = sum(s > scores[i] for s in scores)
        level = [j for j, s in enumerate(scores) if s == scores[i]]
        orders = list(itertools.permutations(level))
        for order in orders:
            rank = above + order.index(i) + 1
            for k in ks:
                hits[k] += (rank <= k) / len(orders)
            rr += 1 / rank / len(orders)
    n = len(q)
    return {**{f"recall@{k}": 100 * hits[k] / n for k in ks}, "mrr": 100 * rr / n}


def test_retrieval_metrics_equal_a_brute_force_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20, 5, generator=g, dtype=torch.float64)
    b = a + 0.8 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    b[3], b[7] = b[5].clone(), b[5].clone()  # exact ties among candidates
    result = retrieval_metrics(a, b, ks=(1, 5, 10))
    assert result["a_to_b"] == pytest.approx(_brute_force(a, b, (1, 5, 10)), abs=1e-9)
    assert result["b_to_a"] == pytest.approx(_brute_force(b, a, (1, 5, 10)), abs=1e-9)
    assert result["chance"]["mrr"] == pytest.approx(100 * sum(1 / r for r in range(1, 21)) / 20)


# ---------------------------------------------------------------- molecules and the paired modality


def test_descriptions_of_known_molecules():
    pytest.importorskip("rdkit", reason="the molecule data need RDKit (pip install mmcl[molecules])")
    from mmcl.modalities.paired.molecules import describe

    aspirin = describe("CC(=O)Oc1ccccc1C(=O)O")
    assert aspirin.startswith("C9H8O4, 13 heavy atoms, 1 ring, 1 aromatic ring.")
    assert "carboxylic acid" in aspirin and "ester" in aspirin and "benzene ring" in aspirin
    ethanol = describe("CCO")
    assert ethanol.startswith("C2H6O, 3 heavy atoms, 0 rings.") and "aliphatic hydroxyl group" in ethanol
    assert "benzene" not in ethanol and "ester" not in ethanol
    assert "2 aromatic rings" in describe("c1ccc2ccccc2c1")  # naphthalene


def _demo_overrides(tiny_model: Path, tmp_path: Path) -> list[str]:
    return [
        f"model.towers.b.model.name_or_path={tiny_model}",
        "model.towers.a.model.head_dim=32",
        "model.towers.a.model.hidden_dim=16",
        "data.towers.a.dataset_options={max_molecules: 64}",
        "data.test_size=16",
        "train.max_steps=6",
        "train.batch_size=16",
        "optim.warmup_steps=0",
        "optim.lr=0.01",
        "train.progress_bar=false",
        "train.loggers=[]",
        f"train.output_dir={tmp_path}",
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.test_text import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


def test_paired_demo_trains_and_evaluates_end_to_end(tiny_model, tmp_path):
    pytest.importorskip("rdkit", reason="the molecule data need RDKit (pip install mmcl[molecules])")
    run = mmcl.pretrain("paired/molecules_text", _demo_overrides(tiny_model, tmp_path))
    assert run.config.loss["name"] == "clip" and len(run.metrics()) >= 1
    results = mmcl.evaluate(run)  # the modality's default task: retrieval
    retrieval = results["retrieval"]
    assert retrieval["n"] == 16 and retrieval["chance"]["recall@1"] == pytest.approx(100 / 16)
    assert set(retrieval["a_to_b"]) == {"recall@1", "recall@5", "recall@10", "mrr"}
    as_built = mmcl.evaluate("paired/molecules_text", overrides=_demo_overrides(tiny_model, tmp_path))
    assert as_built["encoder"] == "as_built" and "retrieval" in as_built


def test_paired_config_errors_name_the_key(tiny_model, tmp_path):
    pytest.importorskip("rdkit", reason="the molecule data need RDKit (pip install mmcl[molecules])")
    base = _demo_overrides(tiny_model, tmp_path)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['widht'\] in config section 'model.towers.a.model'"):
        load_config("paired/molecules_text", [*base, "model.towers.a.model.widht=3"])
    with pytest.raises(ValueError, match=r"model.towers.b must be a mapping with 'modality'"):
        load_config("paired/molecules_text", [*base, "model.towers.b=3"])
    with pytest.raises(ValueError, match=r"data.test_size=64 leaves fewer than 2"):
        mmcl.pretrain("paired/molecules_text", [*base, "data.test_size=64"])
    with pytest.raises(ValueError, match=r"model.towers.a \(graph\) gives 48, model.towers.b \(text\) gives 32"):
        mmcl.pretrain("paired/molecules_text", [*base, "model.towers.a.model.head_dim=48"])


def test_a_paired_task_runs_in_a_study_like_any_other(tiny_model, tmp_path):
    """``mmcl compare`` on the paired modality: each cell trains both towers, scores retrieval and the representation
    metrics, and the report compares the losses on retrieval's primary score."""
    pytest.importorskip("rdkit", reason="the molecule data need RDKit (pip install mmcl[molecules])")
    import json
    import subprocess
    import sys

    import yaml

    overrides = [o for o in _demo_overrides(tiny_model, tmp_path) if not o.startswith("train.output_dir")]
    study = {
        "name": "paired",
        "seeds": [0],
        "baseline": "clip",
        "random_init": False,
        "losses": ["clip", {"name": "clip", "label": "clip-both", "negatives": "both"}],
        "tasks": [{"name": "molecules", "config": "paired/molecules_text", "overrides": overrides}],
    }
    (tmp_path / "paired.yaml").write_text(yaml.safe_dump(study))
    result = subprocess.run([sys.executable, "-m", "mmcl", "compare", "paired.yaml", "--output", "out"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert {(r["loss"], r["status"], r["modality"]) for r in records} == {
        ("clip", "ok", "paired"),
        ("clip-both", "ok", "paired"),
    }
    for record in records:
        assert record["metric"].startswith("retrieval.") and record["value"] == record["scores"][record["metric"]]
    assert "clip-both" in (tmp_path / "out" / "report.md").read_text()
