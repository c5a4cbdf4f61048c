"""``mmcl compare``: study parsing and its errors, cell identity and idempotence, resume after a kill, failures,
shards, statistics against scipy and hand values, the report recomputed from records, figures, and an end-to-end
study on a tiny budget."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from mmcl.compare.plan import plan
from mmcl.compare.records import read_records
from mmcl.compare.report import build_report
from mmcl.compare.statistics import holm, paired, ranks, summarize
from mmcl.compare.study import read_study
from tests.processes import kill_session, start, wait_for

TINY_DIGITS = [
    "train.max_steps=2", "optim.warmup_steps=0", "data.train_subset=64", "data.test_subset=40", "train.batch_size=32",
    "eval.tasks=[knn]", "eval.knn.k=5", "eval.metrics.pairs=32", "train.log_every=1",
    "train.monitor_losses=[h_ucl, h_scl]",
]  # fmt: skip
STUDY = {
    "name": "tiny",
    "seeds": [0, 1],
    "baseline": "nt_xent",
    "random_init": True,
    "losses": ["nt_xent", {"name": "dhel", "label": "dhel-t3", "temperature": 0.3}],
    "tasks": [{"name": "digits", "config": "quickstart", "overrides": TINY_DIGITS}],
    "claims": [
        {"kind": "better", "loss": "dhel-t3", "than": "nt_xent"},
        {"kind": "bound", "lower": "monitor/h_scl", "upper": "monitor/h_ucl"},
    ],
}


def mmcl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcl", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny study run end to end through the command line (2 processes): its study folder."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(STUDY))
    result = mmcl("compare", "tiny.yaml", "--output", "out", "--jobs", "2", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


# ---------------------------------------------------------------- parsing and errors


@pytest.mark.parametrize(
    "change, message",
    [
        ({"losses": ["nt_xnet"]}, "unknown loss 'nt_xnet'"),
        ({"losses": [{"name": "dhel", "temprature": 0.3}]}, "unknown option(s) ['temprature'] for loss 'dhel'"),
        ({"losses": ["nt_xent", "nt_xent"]}, "duplicated loss label(s) ['nt_xent']"),
        ({"losses": ["nt_xent", {"name": "dcl", "label": "random_init"}]}, "duplicated loss label(s) ['random_init']"),
        ({"tasks": [{"name": "x", "config": "no/such"}]}, "neither a file nor a packaged config"),
        ({"tasks": [{"name": "x", "config": "quickstart", "overrides": ["train.bach_size=3"]}]}, "unknown key(s)"),
        ({"tasks": [{"name": "x", "config": "quickstart", "metric": "sts.avg"}]}, "which the task does not run"),
        ({"tasks": [{"name": "x", "config": "quickstart", "overrides": ["data.root=${NOWHERE}"]}]},
         "the study needs the variable(s) ['NOWHERE']"),
        ({"baseline": "simclr"}, "baseline='simclr' is not one of the study's loss labels"),
        ({"seeds": [0, 0]}, "duplicated seed(s) ['0']"),
        ({"budget": 3}, "unknown key(s) ['budget'] in the study"),
        ({"claims": [{"kind": "better", "loss": "macl", "than": "nt_xent"}]}, "names loss label(s) ['macl']"),
        ({"claims": [{"kind": "wins"}]}, "kind must be one of"),
        # issue 25.9: a claim on a metric that does not exist, or a bound on losses never monitored
        ({"claims": [{"kind": "better", "loss": "dhel-t3", "than": "nt_xent", "metric": "nope.x"}]},
         "claims[0] (better): metric 'nope.x' is not a score of any of its tasks ['digits']; valid: ["),
        ({"claims": [{"kind": "bound", "lower": "monitor/h_scl", "upper": "monitor/hcl"}]},
         "claims[0] (bound): no task logs both ['monitor/h_scl', 'monitor/hcl'] along training"),
        ({"claims": [{"kind": "at_least", "loss": "dhel-t3", "than": "nt_xent"}]},
         "claims[0] (at_least) needs ['margin']"),
        ({"claims": [{"kind": "at_least", "loss": "dhel-t3", "than": "nt_xent", "margin": -1}]},
         "margin must be a finite number >= 0"),
        ({"claims": [{"kind": "better", "loss": "dhel-t3", "than": "nt_xent", "margn": 1}]},
         "unknown key(s) ['margn']"),
        ({"reference": "dcl"}, "reference='dcl' is not a row of the study"),
    ],
)  # fmt: skip
def test_study_errors_name_the_problem(change, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        read_study({**STUDY, **change})
    assert message in str(error.value)


def test_the_help_and_the_example_show_every_key_of_a_study_file_and_the_example_runs(tmp_path):
    """``mmcl compare --help`` names the study file's keys; ``--example`` prints a commented study that the reader
    takes as it is and whose cells plan (``--dry-run``) from an empty folder."""
    from mmcl.compare.study import STUDY_KEYS, TASK_KEYS

    help_text = mmcl("compare", "--help", cwd=tmp_path).stdout
    for key in STUDY_KEYS:
        assert f"\n  {key} " in help_text, key
    assert all(key in help_text.split("\n  tasks ")[1].splitlines()[0] for key in TASK_KEYS)
    example = mmcl("compare", "--example", cwd=tmp_path)
    assert example.returncode == 0 and example.stdout.startswith("# ")
    for key in [*STUDY_KEYS, *TASK_KEYS]:
        assert f"{key}:" in example.stdout, f"the example does not show {key!r}"
    (tmp_path / "study.yaml").write_text(example.stdout)
    study = read_study(tmp_path / "study.yaml", {})
    assert [loss.label for loss in study.losses] == ["nt_xent", "dhel", "hcl-b1"] and study.random_init
    planned = mmcl("compare", "study.yaml", "--dry-run", cwd=tmp_path)
    assert planned.returncode == 0 and "12 to run" in planned.stderr + planned.stdout, planned.stderr[-2000:]


def test_a_loss_the_data_cannot_feed_is_refused(tmp_path):
    text = {"name": "sentences", "config": "text/minilm_eval", "overrides": ["model.name_or_path=unused"]}
    with pytest.raises(ValueError, match=r"loss 'scl' \(scl\) needs class labels, and task 'sentences'"):
        read_study({**STUDY, "losses": ["scl"], "baseline": None, "tasks": [text], "claims": []})
    graphs = {"name": "graphs", "config": "graph/mutag", "overrides": [
        "data.source=pyg", "data.dataset=FakeDataset", f"data.cache_dir={tmp_path}",
        "data.dataset_options={num_graphs: 20, avg_num_nodes: 5, num_channels: 3, num_classes: 2}"]}  # fmt: skip
    with pytest.raises(ValueError, match="reads the class labels that task 'graphs'"):
        read_study({**STUDY, "losses": ["supcon"], "baseline": None, "tasks": [graphs], "claims": []})


def test_variables_fill_the_study_and_cells_have_stable_ids():
    task = {"name": "d", "config": "quickstart", "overrides": ["train.max_steps=${STEPS}", "optim.warmup_steps=0"]}
    study = read_study({**STUDY, "claims": STUDY["claims"][:1], "tasks": [task]}, {"STEPS": "7"})
    cells = study.cells()
    assert [c.id for c in cells] == [f"d/{loss}/seed{s}" for loss in ("random_init", "nt_xent", "dhel-t3")
                                     for s in (0, 1)]  # fmt: skip
    assert {c.raw["train"]["max_steps"] for c in cells} == {7}
    assert cells[2].raw["loss"] == {"name": "nt_xent"} and cells[4].raw["loss"] == {"name": "dhel", "temperature": 0.3}
    assert cells[3].raw["train"]["seed"] == cells[3].raw["eval"]["seed"] == 1  # seeds pair every loss
    again = read_study({**STUDY, "claims": [], "tasks": study.source["tasks"]}).cells()
    assert [c.definition for c in again] == [c.definition for c in cells]
    assert len({c.definition for c in cells}) == len(cells)


def test_shards_are_disjoint_and_complete():
    cells = read_study({**STUDY, "seeds": list(range(7))}).cells()
    for count in (1, 2, 3, 5):
        shards = [{c.id for c in cells if c.shard(count) == i} for i in range(1, count + 1)]
        assert sum(len(s) for s in shards) == len(cells) and set().union(*shards) == {c.id for c in cells}
    assert {c.shard(3) for c in cells} == {1, 2, 3}


# ---------------------------------------------------------------- statistics (more in test_compare_statistics.py)


def test_summary_and_paired_test_against_scipy_and_hand_values():
    a = {0: 91.0, 1: 93.5, 2: 90.25, 3: 94.0}
    b = {0: 90.0, 1: 92.0, 2: 90.5, 3: 92.0, 9: 50.0}  # seed 9 has no partner: ignored
    s = summarize(list(a.values()))
    half = stats.t.ppf(0.975, 3) * np.std(list(a.values()), ddof=1) / 2
    assert s.mean == pytest.approx(92.1875) and s.ci == pytest.approx((s.mean - half, s.mean + half))
    comparison = paired(a, b)
    assert comparison.seeds == (0, 1, 2, 3) and comparison.diff.mean == pytest.approx(1.0625)
    assert comparison.p == pytest.approx(stats.ttest_rel([91, 93.5, 90.25, 94], [90, 92, 90.5, 92]).pvalue)


def test_holm_and_ranks_by_hand():
    # sorted p: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert holm([0.04, 0.01, 0.03, math.nan]) == pytest.approx([0.06, 0.03, 0.06, math.nan], nan_ok=True)
    assert ranks({"a": 90.0, "b": 92.0, "c": 90.0, "d": math.nan}) == {"a": 2.5, "b": 1.0, "c": 2.5}  # d: no rank


# ---------------------------------------------------------------- the end-to-end study


def test_the_study_records_every_cell_in_one_schema(finished):
    records = [json.loads(line) for line in (finished / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    for record in records:
        assert {"task", "modality", "dataset", "loss", "loss_options", "seed", "status", "metric", "value", "scores",
                "representation", "diagnostics", "steps", "samples_seen", "train_seconds", "eval_seconds",
                "peak_memory_mb", "run_dir", "versions"} <= record.keys()  # fmt: skip
        assert record["metric"] == "knn.top1" and record["value"] == record["scores"]["knn.top1"]
        assert {"backbone.alignment", "backbone.uniformity", "backbone.effective_rank"} <= record[
            "representation"
        ].keys()
    trained = [r for r in records if r["loss"] != "random_init"]
    assert all(r["steps"] == 2 and r["samples_seen"] == 64 and len(r["curves"]) == 2 for r in trained)
    assert all("monitor/h_scl" in r["curves"][0] for r in trained)
    # paired seeds: every loss starts from the same weights at a seed (the random-init row scores them)
    first = {(r["loss"], r["seed"]): finished / r["run_dir"] for r in records}
    assert (first["nt_xent", 0] / "checkpoints").is_dir() and (first["random_init", 0] / "eval.json").is_file()


def test_the_report_is_recomputed_from_the_records(finished):
    records = [json.loads(line) for line in (finished / "records.jsonl").read_text().splitlines()]
    rows = {row["loss"]: row for row in csv.DictReader((finished / "report.csv").open())}
    for loss in ("random_init", "nt_xent", "dhel-t3"):
        values = [r["value"] for r in records if r["loss"] == loss]
        assert float(rows[loss]["mean"]) == pytest.approx(np.mean(values))
        assert float(rows[loss]["std"]) == pytest.approx(np.std(values, ddof=1))
        assert int(rows[loss]["n"]) == 2
    by_seed = {loss: {r["seed"]: r["value"] for r in records if r["loss"] == loss} for loss in ("nt_xent", "dhel-t3")}
    expected = np.mean([by_seed["dhel-t3"][s] - by_seed["nt_xent"][s] for s in (0, 1)])
    assert float(rows["dhel-t3"]["diff_to_baseline"]) == pytest.approx(expected)
    report = (finished / "report.md").read_text()
    assert "weighted kNN top-1 (%)" in report and "## Claims" in report and "monitor/h_scl <= monitor/h_ucl" in report
    mean = np.mean([r["value"] for r in records if r["loss"] == "nt_xent"])
    assert f"{mean:.2f} +- " in report


def test_figures_are_written_as_png_and_svg(finished):
    names = {"scores", "baseline_differences", "alignment_uniformity", "rank_vs_score", "training_curves", "cost"}
    for name in names:
        png, svg = finished / "plots" / f"{name}.png", finished / "plots" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert ElementTree.parse(svg).getroot().tag.endswith("svg")
        assert f"plots/{name}.png" in (finished / "report.md").read_text()


def check_figure(figure, name: str) -> None:
    """The rules every figure follows: no empty panel, every axis that shows data labelled (a y axis shared with a
    labelled one counts), labelled colour bars, tick labels of at least 8 points, a curve of one point a marker."""
    for axis in (axis for axis in figure.axes if axis.get_visible()):
        what = f"{name}: the panel {axis.get_title()!r}"
        if hasattr(axis, "_colorbar"):
            assert axis.get_ylabel() or axis.get_xlabel(), f"{what}: a colour bar without a label"
            continue
        shows = axis.get_lines() or axis.collections or axis.patches or axis.images
        assert shows, f"{what} is empty"
        siblings = axis.get_shared_y_axes().get_siblings(axis)
        assert axis.get_xlabel() and any(a.get_ylabel() for a in siblings), f"{what} has an unlabelled axis"
        for label in [*axis.get_xticklabels(), *axis.get_yticklabels()]:
            assert not label.get_text() or label.get_fontsize() >= 8, f"{what}: {label.get_fontsize()} pt ticks"
        for line in axis.get_lines():
            if len(line.get_xdata()) == 1:
                assert line.get_marker() not in (None, "None", "", " "), f"{what}: a single point without a marker"


def study_tables(folder: Path):
    from mmcl.compare.analysis import loss_order, task_infos, task_table

    records = list(read_records(folder).values())
    infos = task_infos(records)
    order = loss_order(records, None)
    seeds = sorted({r.seed for r in records})
    return records, {info.task: task_table(records, info, order, "nt_xent", seeds) for info in infos}, infos


def test_every_study_figure_is_labelled_and_has_no_empty_panel(finished):
    import dataclasses

    from mmcl.compare.analysis import task_table
    from mmcl.compare.study_figures import draw_scores, draw_study_figures, draw_training_curves

    records, tables, infos = study_tables(finished)
    drawn = dict(draw_study_figures(records, tables, infos, "nt_xent"))
    assert set(drawn) == {"scores", "alignment_uniformity", "rank_vs_score", "cost", "baseline_differences",
                          "training_curves"}  # fmt: skip
    for name, figure in drawn.items():
        check_figure(figure, name)
    (scores_axis,) = [axis for axis in drawn["scores"].axes if axis.get_visible()]
    texts = [text.get_text() for text in scores_axis.texts]
    assert texts.count("n=2") == 2, texts  # two seeds: each loss's interval is marked
    legend = drawn["alignment_uniformity"].legends[0]
    assert {handle.get_markerfacecolor() for handle in legend.legend_handles} == {"white"}  # not the score colours
    one_point = [dataclasses.replace(r, curves=r.curves[:1]) for r in records]  # a run that logged one step
    curves = draw_training_curves(one_point, infos)
    check_figure(curves, "training_curves of one logged step")
    panels = [axis for axis in curves.axes if axis.get_visible() and axis.get_lines()]
    assert len(panels) == 6 and all(axis.get_xlim()[0] == 0 < 1 < axis.get_xlim()[1] for axis in panels)
    assert all(any(line.get_marker() == "o" for line in axis.get_lines()) for axis in panels)
    one_seed = [r for r in records if r.seed == 0]  # a study of one seed: no interval, marked so
    order = list(dict.fromkeys(r.loss for r in one_seed))
    single = {info.task: task_table(one_seed, info, order, "nt_xent", [0]) for info in infos}
    figure = draw_scores(single, infos)
    check_figure(figure, "scores of one seed")
    assert "n=1, no interval" in [text.get_text() for axis in figure.axes for text in axis.texts]


def test_mmcl_plot_writes_into_the_run_folder_and_shows_the_random_init_baseline(finished, tmp_path):
    from mmcl.compare.figures import draw_runs

    run = tmp_path / "nt_xent"
    shutil.copytree(finished / "runs" / "digits" / "nt_xent" / "seed0", run)
    baseline = mmcl_api_evaluate_random_init(run)
    drawn = mmcl("plot", str(run), cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["runs.png", "runs.svg"]
    assert not list(tmp_path.glob("*.png")), "mmcl plot wrote into the current folder"
    figure = draw_runs([run])
    check_figure(figure, "mmcl plot")
    scores = next(axis for axis in figure.axes if axis.get_xlabel().startswith("score"))
    assert f"{baseline:.2f}" in " ".join(text.get_text() for text in scores.texts)
    assert "random init" in [text.get_text() for text in scores.get_legend().get_texts()]


def mmcl_api_evaluate_random_init(run: Path) -> float:
    import mmcl as api

    return api.evaluate(run, tasks=["knn"], random_init=True)["knn"]["top1"]


def test_running_the_study_again_repeats_nothing(finished):
    before = {p.name: p.read_text() for p in (finished / "records").glob("*.json")}
    again = mmcl("compare", "tiny.yaml", "--output", "out", cwd=finished.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 done, 0 failed earlier, 0 to run" in again.stderr
    assert {p.name: p.read_text() for p in (finished / "records").glob("*.json")} == before
    dry = mmcl("compare", "tiny.yaml", "--output", "out", "--dry-run", cwd=finished.parent)
    assert dry.returncode == 0 and "0 to run" in dry.stdout


def test_a_changed_study_is_refused_under_an_existing_folder(finished, tmp_path):
    changed = {**STUDY, "losses": ["nt_xent", {"name": "dhel", "label": "dhel-t3", "temperature": 0.5}]}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    before = (finished / "study.yaml").read_text()
    refused = mmcl("compare", str(tmp_path / "changed.yaml"), "--output", str(finished), cwd=tmp_path)
    assert refused.returncode == 2 and "the study's definition changed for 2 cell(s)" in refused.stderr
    assert (finished / "study.yaml").read_text() == before, "nothing is written before the check"


def test_report_merges_shards(finished, tmp_path):
    shards = [tmp_path / "shard1", tmp_path / "shard2"]
    for i, record in enumerate(sorted((finished / "records").glob("*.json"))):
        target = shards[i % 2] / "records"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(record, target)
    shutil.copy(finished / "study.yaml", shards[0] / "study.yaml")
    merged = mmcl("compare", "--report", *map(str, shards), "--output", str(tmp_path / "merged"), cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert (tmp_path / "merged" / "report.csv").read_text() == (finished / "report.csv").read_text()
    assert len((tmp_path / "merged" / "records.jsonl").read_text().splitlines()) == 6


def test_shards_of_different_definitions_are_refused(finished, tmp_path):
    """Issue 25.4: merging a shard of max_steps 2 with one of max_steps 3 pooled seeds of different budgets."""
    shards = [tmp_path / "a", tmp_path / "b"]
    for i, record in enumerate(sorted((finished / "records").glob("*.json"))):
        (shards[i % 2] / "records").mkdir(parents=True, exist_ok=True)
        shutil.copy(record, shards[i % 2] / "records")
    text = (finished / "study.yaml").read_text()
    (shards[0] / "study.yaml").write_text(text)
    (shards[1] / "study.yaml").write_text(text.replace("train.max_steps=2", "train.max_steps=3"))
    merged = mmcl("compare", "--report", *map(str, shards), "--output", str(tmp_path / "merged"), cwd=tmp_path)
    assert merged.returncode == 2, merged.stderr[-2000:]
    assert f"the study folders {shards[0]} and {shards[1]} hold different study definitions" in merged.stderr
    assert f"tasks 'digits': train.max_steps is 2 in {shards[0]} and 3 in {shards[1]}" in merged.stderr
    assert not (tmp_path / "merged").exists(), "nothing is written before the check"


def test_a_corrupt_record_is_named_and_shown_as_a_gap(finished, tmp_path):
    """Issue 25.11: a corrupt records/<cell>.json blocked --report, re-runs and --dry-run with a bare JSON error."""
    study = tmp_path / "study"
    shutil.copytree(finished / "records", study / "records")
    shutil.copy(finished / "study.yaml", study / "study.yaml")
    shutil.copy(finished.parent / "tiny.yaml", tmp_path / "tiny.yaml")
    (study / "records" / "digits__dhel-t3__seed1.json").write_text('{"id": "digits/dhel-t3/\x01seed1"')
    dry = mmcl("compare", "tiny.yaml", "--output", "study", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 2, dry.stderr[-2000:]
    assert "study/records/digits__dhel-t3__seed1.json is not a readable cell record (Invalid control" in dry.stderr
    assert "delete it to re-run that cell" in dry.stderr
    report = mmcl("compare", "--report", "study", "--no-plots", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (study / "report.md").read_text()
    assert "5 cells ok, 0 failed, 1 unreadable" in text and "| digits/dhel-t3/seed1 | " in text
    assert "digits/dhel-t3/seed1: its record is unreadable" in text  # the task's gap, under its table


@pytest.mark.parametrize("name", ["cpu-small", "claim-macl", "claim-batch-size", "claim-hscl"])
def test_the_stored_studies_report_from_their_records(name, tmp_path):
    """The packaged studies' stored results (records.jsonl, no records/ and no study.yaml) rebuild their report with
    --study; the stored report.md and report.csv are the ones this mmcl writes."""
    stored = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / f"study-{name}"
    shutil.copy(stored / "records.jsonl", tmp_path / "records.jsonl")
    before = (tmp_path / "records.jsonl").read_text()
    built = mmcl("compare", "--report", str(tmp_path), "--study", name, "--no-plots", cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (tmp_path / "records.jsonl").read_text() == before, "stored records are the source: left as they are"
    assert (tmp_path / "report.md").read_text() == (stored / "report.md").read_text()
    assert (tmp_path / "report.csv").read_text() == (stored / "report.csv").read_text()


def test_a_failing_cell_is_recorded_shown_and_retried_only_when_asked(tmp_path):
    failing = {**STUDY, "seeds": [0], "random_init": False, "losses": ["nt_xent"], "claims": [],
               "tasks": [{"name": "diverging", "config": "quickstart",
                          "overrides": [*TINY_DIGITS, "optim.lr=1e30", "optim.name=sgd"]}]}  # fmt: skip
    (tmp_path / "failing.yaml").write_text(yaml.safe_dump(failing))
    first = mmcl("compare", "failing.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
    assert first.returncode == 0 and "1 cell(s) failed" in first.stdout, first.stderr[-2000:]
    (record,) = read_records(tmp_path / "out").values()
    assert record.status == "failed" and "NonFiniteError: step 2" in record.error
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed and unreadable cells" in report and "diverging/nt_xent/seed0" in report
    assert "| nt_xent | n/a: no result |" in report
    again = mmcl("compare", "failing.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
    assert "0 done, 1 failed earlier, 0 to run" in again.stderr
    retried = mmcl("compare", "failing.yaml", "--output", "out", "--no-plots", "--retry-failed", cwd=tmp_path)
    assert "1 to run" in retried.stderr and read_records(tmp_path / "out")[record.id].finished > record.finished


def test_a_study_killed_in_the_middle_finishes_what_is_missing(tmp_path):
    long = {**STUDY, "seeds": [0], "claims": [], "tasks": [{"name": "digits", "config": "quickstart", "overrides": [
        *TINY_DIGITS[1:], "train.max_steps=25", "train.checkpoint_every=1"]}]}  # fmt: skip
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(long))
    process = start("compare", "long.yaml", "--output", "out", cwd=tmp_path)
    records = tmp_path / "out" / "records"
    interrupted = tmp_path / "out" / "runs" / "digits" / "nt_xent" / "seed0" / "checkpoints"
    wait_for(lambda: len(list(records.glob("*.json"))) >= 1 and any(interrupted.glob("step_*.pt")), timeout=300,
             process=process)  # fmt: skip
    kill_session(process)  # the study and its cell's process
    done_before = {p.name: p.read_text() for p in records.glob("*.json")}
    finished = mmcl("compare", "long.yaml", "--output", "out", "--no-plots", cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]
    after = {p.name: p.read_text() for p in records.glob("*.json")}
    assert len(after) == 3 and all(after[name] == text for name, text in done_before.items())
    sessions = json.loads((interrupted.parent / "run.json").read_text())["sessions"]
    assert sessions[-1]["kind"] == "resume" and sessions[-1]["status"] == "finished"


def test_a_cell_validates_its_config_once_and_builds_its_loss_once(tmp_path, monkeypatch):
    """Training hands the evaluation its encoder and adapter: the cell's config is validated once (not again when
    the run folder's config is read back) and its loss built once."""
    from mmcl import losses
    from mmcl.compare.cell import run_cell
    from mmcl.compare.records import CellSpec
    from mmcl.compare.runner import write_spec
    from mmcl.engine import config

    study = read_study({**STUDY, "seeds": [0], "random_init": False, "claims": [], "baseline": None,
                        "losses": [{"name": "dhel", "temperature": 0.3}]})  # fmt: skip
    (cell,) = study.cells()
    spec = CellSpec.from_json(write_spec(study, cell, tmp_path, threads=1).read_text())
    validated, built = [], []
    check_effective, build = config.check_effective, losses.build
    monkeypatch.setattr(config, "check_effective", lambda c: (validated.append(c.loss["name"]), check_effective(c)))
    monkeypatch.setattr(losses, "build", lambda name, **options: (built.append(name), build(name, **options))[1])
    record = run_cell(spec)
    assert record.ok, record.traceback
    assert validated == ["dhel"] and built.count("dhel") == 1, (validated, built)
    assert record.steps == 2 and record.value == record.scores["knn.top1"]


def test_plan_lists_missing_cells_without_running(finished):
    study = read_study(yaml.safe_load((finished / "study.yaml").read_text()))
    work = plan(study, finished)
    assert len(work.done) == 6 and not work.todo
    assert build_report([finished], plots=False).name == "report.md"


def test_mmcl_plot_draws_runs(finished, tmp_path):
    runs = [finished / "runs" / "digits" / loss / "seed0" for loss in ("nt_xent", "dhel-t3")]
    drawn = mmcl("plot", *map(str, runs), "--output", str(tmp_path), "--name", "two", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
    root = ElementTree.parse(tmp_path / "two.svg").getroot()
    texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert root.tag.endswith("svg") and (texts or (tmp_path / "two.svg").stat().st_size > 10000)
    missing = mmcl("plot", str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 2 and "has no metrics.jsonl" in missing.stderr
