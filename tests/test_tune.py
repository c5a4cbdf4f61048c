"""Fair comparisons: a study's ``tune:`` section gives every loss the same trials, selects on validation data only
(the test split never), resumes a killed search without repeating a trial, prunes on validation scores, and
refuses a bad section before any trial runs; validation data per modality (a stratified hold-out of the training
split, STS-B dev, nested cross-validation)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import mmcl
from mmcl import losses
from mmcl.compare.study import read_study
from mmcl.compare.tune import parse_dimension
from tests.processes import kill_session, start, wait_for

DIGITS = ["train.max_steps=6", "optim.warmup_steps=0", "data.train_subset=160", "data.test_subset=60",
          "train.batch_size=32", "eval.tasks=[knn]", "eval.knn.k=5"]  # fmt: skip


def study(**changes) -> dict:
    base = {"name": "tuned", "seeds": [0], "losses": ["nt_xent", "dhel"],
            "tasks": [{"name": "digits", "config": "quickstart", "overrides": DIGITS}],
            "tune": {"trials": 3, "seed": 0}}  # fmt: skip
    return {**base, **changes}


def mmcl_cli(*args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def trials_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- search spaces


def test_every_loss_declares_a_search_space_of_its_own_options_that_builds_at_every_corner():
    for name in losses.available():
        space = losses.info(name).search_space
        assert set(space) <= set(losses.options(name)), name
        for corner in itertools.product(*[(dim.low, dim.high) for dim in map(parse_dimension, space.values(), space)]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                losses.build(name, **dict(zip(space, corner)))
    assert "temperature" in losses.info("nt_xent").search_space and "beta" in losses.info("hcl").search_space


def test_mmcl_losses_shows_the_search_space(tmp_path):
    shown = mmcl_cli("losses", "dystress", cwd=tmp_path, timeout=120)
    assert "search space (mmcl compare's tune:):" in shown.stdout and "tau_min: log [0.02, 0.1]" in shown.stdout


@pytest.mark.parametrize(
    "tune, message",
    [
        ({"space": {"nt_xent": {"beta": [0, 1]}}}, "tune.space.nt_xent.beta: the loss does not take 'beta'"),
        ({"space": {"*": {"temperature": [0.5, 0.1]}}}, "empty or inverted range"),
        ({"space": {"*": {"temperature": {"log": [0.0, 1.0]}}}}, "a log range must lie above 0"),
        ({"trials": 0}, "tune.trials=0 must be an integer >= 1"),
        ({"sampler": "bayes"}, "tune.sampler='bayes' is not one of"),
        ({"pruner": "asha"}, "tune.pruner='asha' is not one of"),
        ({"pruner": "median"}, "no task sets train.validate_every"),
        ({"sampler": "grid"}, "tune.sampler=grid needs {choice: [...]}"),
        ({"space": {"simclr": {"temperature": [0.1, 1]}}}, "no loss of the study is named or labelled 'simclr'"),
        ({"optim": {"name": ["adam"]}}, "tune.optim.name is not a numeric optimiser key"),
        ({"validation_fraction": 1.5}, "tune.validation_fraction=1.5 must be a number in (0, 1)"),
        ({"speed": 1}, "unknown key"),
    ],
)
def test_a_bad_tune_section_is_refused_when_the_study_is_read(tune, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_study(study(tune={"trials": 3, **tune}))


def test_a_space_reaching_options_the_loss_refuses_is_refused_before_any_trial():
    """DySTreSS's tau_min up to 0.2 and tau_max from 0.1: the corner tau_min=0.2, tau_max=0.1 is not a loss."""
    overlapping = {"dystress": {"tau_min": {"log": [0.02, 0.2]}, "tau_max": {"log": [0.1, 1.0]}}}
    corner = r"tune: the loss 'dystress' at tau_min=0.2, tau_max=0.1 \(a corner of its search space"
    with pytest.raises(ValueError, match=corner + r".*DySTreSS needs 0 < tau_min <= tau_max"):
        read_study(study(losses=["nt_xent", "dystress"], tune={"trials": 3, "space": overlapping}))
    untuned = {"name": "dystress", "tau_min": 0.05, "tau_max": 0.1, "tune": False}
    read_study(study(losses=["nt_xent", untuned], tune={"trials": 3, "space": overlapping}))  # runs at its options


def test_a_task_whose_protocol_has_no_validation_score_cannot_be_tuned():
    task = {"name": "digits", "config": "quickstart", "metric": "metrics.backbone.effective_rank",
            "overrides": [*DIGITS, "eval.tasks=[knn, metrics]"]}  # fmt: skip
    with pytest.raises(ValueError, match="whose protocol has no validation score"):
        read_study(study(tasks=[task]))


# ---------------------------------------------------------------- validation data


def test_the_validation_hold_out_is_a_stratified_part_of_the_training_split():
    from mmcl.engine.config import build_adapter, load_config

    adapter = build_adapter(load_config("quickstart"))
    splits = adapter.validation_splits(0.1, seed=0)
    train = adapter.eval_datasets()["train"]
    assert len(splits["train"]) + len(splits["test"]) == len(train) and len(splits["test"]) == round(0.1 * len(train))
    assert not set(splits["train"].indices) & set(splits["test"].indices)
    held = torch.bincount(torch.tensor([int(train[i][1]) for i in splits["test"].indices]), minlength=10)
    assert held.min() >= 13 and held.max() <= 16  # 144 of 1437 digits, stratified over 10 classes


def test_validation_during_training_scores_the_hold_out_and_can_stop_the_run(tmp_path):
    """eval.validation_metric=knn.top1 validates images on the hold-out (best.pt selected on it); the callback's
    True ends the run after that step (how a pruner stops a trial)."""
    from mmcl.engine.config import load_config
    from mmcl.engine.trainer import train

    config = load_config("quickstart", [*DIGITS, "train.validate_every=2", "eval.validation_metric=knn.top1",
                                        f"train.output_dir={tmp_path}", "train.progress_bar=false"])  # fmt: skip
    seen = []
    trained = train(config, on_validation=lambda step, score: (seen.append((step, score)), step >= 4)[1])
    assert [step for step, _ in seen] == [2, 4] and trained.stopped_early == 4
    assert [line["step"] for line in mmcl.Run(trained.folder).metrics() if "val_knn_top1" in line] == [2, 4]
    assert trained.checkpoint.name == "best.pt"


def test_graph_classification_validates_each_fold_on_its_training_part_only():
    """A fold's validation score (inner cross-validation on its training part) stays the same when its test
    items change; its test accuracy does not."""
    from sklearn.model_selection import StratifiedKFold

    from mmcl.tasks.graph_classification import cross_validated_accuracy

    x = torch.cat([torch.randn(40, 8) + 1, torch.randn(40, 8) - 1])
    y = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    first = cross_validated_accuracy(x, y, folds=4, inner_folds=3)
    _, test = next(StratifiedKFold(n_splits=4, shuffle=True, random_state=0).split(x.numpy(), y.numpy()))
    changed = x.clone()
    changed[test] = -changed[test]  # the first fold's test items now lie with the other class
    second = cross_validated_accuracy(changed, y, folds=4, inner_folds=3)
    a, b = first["per_seed"][0], second["per_seed"][0]
    assert a["fold_validation"][0] == b["fold_validation"][0] and a["fold_accuracies"][0] != b["fold_accuracies"][0]
    assert first["validation"] == pytest.approx(sum(a["fold_validation"]) / 4)


# ---------------------------------------------------------------- a tuned study end to end


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """A tuned study run once: two losses searched (3 trials each, median pruner), one untuned, one seed."""
    folder = tmp_path_factory.mktemp("tuned")
    task = {"name": "digits", "config": "quickstart", "overrides": [*DIGITS, "train.validate_every=2"]}
    losses_ = ["nt_xent", "dhel", {"name": "nt_xent", "label": "nt_xent-default", "tune": False}]
    tune = {"trials": 3, "seed": 0, "pruner": "median"}
    (folder / "s.yaml").write_text(yaml.safe_dump(study(tasks=[task], losses=losses_, tune=tune)))
    result = mmcl_cli("compare", "s.yaml", "--output", "out", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


def test_every_loss_gets_the_same_trials_scored_on_validation_data(tuned):
    trials = trials_of(tuned)
    by_loss = {loss: [t for t in trials if t["loss"] == loss] for loss in ("nt_xent", "dhel")}
    assert {loss: sorted(t["trial"] for t in mine) for loss, mine in by_loss.items()} == {
        "nt_xent": [0, 1, 2], "dhel": [0, 1, 2]
    }  # fmt: skip
    assert all(t["split"].startswith("validation: the same protocol on a stratified hold-out") for t in trials)
    assert {t["loss"] for t in trials} == {"nt_xent", "dhel"}  # the untuned entry is not searched
    for t in trials:
        assert set(t["options"]) == {"loss.temperature"} and 0.02 <= t["options"]["loss.temperature"] <= 1.0


def test_the_final_cells_run_at_the_best_validation_trial(tuned):
    from mmcl.compare.records import read_records
    from mmcl.compare.tuning_report import selected

    trials = trials_of(tuned)
    records = read_records(tuned)
    for loss in ("nt_xent", "dhel"):
        best = selected([t for t in trials if t["loss"] == loss])
        record = records[f"digits/{loss}/seed0"]
        assert record.tuned["selected_trial"] == best["trial"] and record.tuned["validation"] == best["value"]
        assert record.loss_options["temperature"] == best["options"]["loss.temperature"]
        config = yaml.safe_load((tuned / record.run_dir / "config.yaml").read_text())
        assert config["loss"]["temperature"] == best["options"]["loss.temperature"]
    assert records["digits/nt_xent-default/seed0"].tuned is None


def test_pruned_trials_stop_early_and_count_toward_the_budget(tuned):
    trials = trials_of(tuned)
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "the median pruner stopped no trial of this study"
    assert all(t["stopped_early"] < 6 and t["steps"] == t["stopped_early"] and t["intermediate"] for t in pruned)
    report = (tuned / "report.md").read_text()
    assert "## Tuning" in report and f"The pruner stopped {len(pruned)} of 6 trials early" in report
    assert "| nt_xent | nt_xent-default |" in report  # tuned vs. defaults, side by side
    assert (tuned / "plots" / "tuning_sensitivity.png").is_file() and (tuned / "plots" / "tuning_budget.png").is_file()


def test_a_rerun_continues_and_repeats_nothing(tuned):
    before = (tuned / "trials.jsonl").read_text()
    again = mmcl_cli("compare", "s.yaml", "--output", "out", cwd=tuned.parent)
    assert again.returncode == 0 and not re.search(r"/trial\d+ (ok|failed)", again.stderr), again.stderr[-2000:]
    assert "3 cell(s), 3 done" in again.stderr
    assert (tuned / "trials.jsonl").read_text() == before
    dry = mmcl_cli("compare", "s.yaml", "--output", "out", "--dry-run", cwd=tuned.parent)
    assert "digits/nt_xent" in dry.stdout and "3/3 trials; loss.temperature log [0.02, 1]" in dry.stdout


def test_the_search_never_reads_the_test_split(tmp_path):
    """The same study with another test split (other test images) proposes and scores the same trials, value for
    value: nothing of the test split reaches the search."""
    values = []
    for test_subset in (60, 90):
        folder = tmp_path / str(test_subset)
        folder.mkdir()
        overrides = [o for o in DIGITS if not o.startswith("data.test_subset")] + [f"data.test_subset={test_subset}"]
        task = {"name": "digits", "config": "quickstart", "overrides": overrides}
        (folder / "s.yaml").write_text(yaml.safe_dump(study(tasks=[task], losses=["nt_xent"],
                                                            tune={"trials": 2, "seed": 0})))  # fmt: skip
        result = mmcl_cli("compare", "s.yaml", "--output", "out", "--no-plots", cwd=folder)
        assert result.returncode == 0, result.stderr[-2000:]
        values.append([(t["trial"], t["options"], t["value"], t["state"]) for t in trials_of(folder / "out")])
    assert values[0] == values[1]


def test_a_killed_search_resumes_without_repeating_a_finished_trial(tmp_path):
    overrides = [o for o in DIGITS if "max_steps" not in o] + ["train.max_steps=30", "train.checkpoint_every=1"]
    task = {"name": "digits", "config": "quickstart", "overrides": overrides}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study(tasks=[task], losses=["nt_xent"],
                                                          tune={"trials": 3, "seed": 0})))  # fmt: skip
    process = start("compare", "s.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
    records = tmp_path / "out" / "trials" / "records"
    second = tmp_path / "out" / "trials" / "digits" / "nt_xent" / "trial1" / "checkpoints"
    wait_for(lambda: any(records.glob("*.json")) and any(second.glob("step_*")), timeout=900, process=process)
    kill_session(process)  # the driver and its trial's process
    finished = {p.name: p.read_text() for p in records.glob("*.json")}
    again = mmcl_cli("compare", "s.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = trials_of(tmp_path / "out")
    assert sorted(t["trial"] for t in trials) == [0, 1, 2] and all(t["state"] == "complete" for t in trials)
    assert all((records / name).read_text() == text for name, text in finished.items())  # never run again
    sessions = json.loads((second.parent / "run.json").read_text())["sessions"]
    assert sessions[-1]["kind"] == "resume"  # the interrupted trial continued from its checkpoint


def test_nested_cross_validation_selects_each_fold_on_its_own_validation(tmp_path):
    """Per outer fold, the trial with the best validation score on that fold's training part: test accuracies,
    however they disagree, select nothing."""
    import optuna

    from mmcl.compare.records import CellRecord
    from mmcl.compare.search import Group, Search, trial_record_path

    graph = {"name": "mutag", "config": "graph/mutag", "overrides": ["data.root=/nowhere", "train.max_steps=2"]}
    tuned_study = read_study(study(tasks=[graph], losses=["graphcl"], tune={"trials": 2, "seed": 0}))
    group = Group(tuned_study.tasks[0], tuned_study.losses[0], tuned_study.tune.space("graphcl", "graphcl"))
    search = Search(group, tuned_study, tmp_path, threads=1)
    folds = {0: ([90, 50, 70], [10, 99, 10]), 1: ([80, 60, 75], [99, 10, 99])}  # validation, test per fold
    for number, (validation, test) in folds.items():
        trial = search.optuna.ask(search.distributions)
        search.optuna.tell(trial, sum(validation) / 3)
        path = trial_record_path(tmp_path, f"mutag/graphcl/trial{number}")
        path.parent.mkdir(parents=True, exist_ok=True)
        record = CellRecord(id="x", definition="", task="mutag", modality="graph", dataset="MUTAG", loss="graphcl",
                            seed=0, metric="m", protocol="p", status="ok",
                            folds={"validation": validation, "test": test})  # fmt: skip
        path.write_text(record.to_json())
    selection = search.selection()
    assert [fold["trial"] for fold in selection["per_fold"]] == [0, 1, 1]
    assert selection["selected_trial"] == 1 and optuna.__version__


def test_the_report_names_the_trial_the_final_cells_ran_at_under_nested_cross_validation():
    """Trial 1 has the best mean validation, but most outer folds chose trial 0, at which the final cell ran: the
    Tuning row says trial 0 and each fold's trial, as the record does."""
    from mmcl.compare.analysis import TaskInfo
    from mmcl.compare.records import CellRecord
    from mmcl.compare.tuning_report import tuning_section

    trials = [{"task": "mutag", "loss": "graphcl", "trial": number, "options": {"loss.temperature": temperature},
               "value": value, "state": "complete", "split": "validation: nested", "steps": 2}
              for number, temperature, value in [(0, 0.1, 80.0), (1, 0.5, 81.0)]]  # fmt: skip
    per_fold = [{"trial": trial, "options": {}, "validation": 0.0} for trial in (0, 0, 1)]
    record = CellRecord(id="mutag/graphcl/seed0", definition="", task="mutag", modality="graph", dataset="MUTAG",
                        loss="graphcl", seed=0, metric="m", protocol="p", status="ok", value=85.0,
                        tuned={"selected_trial": 0, "validation": 80.0, "per_fold": per_fold})  # fmt: skip
    info = TaskInfo("mutag", "graph", "MUTAG", "m", "p")
    row = next(line for line in tuning_section(trials, [record], [info]) if line.startswith("| graphcl"))
    assert row == "| graphcl | 2 (2 / 0 / 0) | 0 (outer folds: 0, 0, 1) | 80.00 | temperature=0.1 |"
    before = next(line for line in tuning_section(trials, [], [info]) if line.startswith("| graphcl"))
    assert before == "| graphcl | 2 (2 / 0 / 0) | 1 | 81.00 | temperature=0.5 |"  # no final cell yet: the best
