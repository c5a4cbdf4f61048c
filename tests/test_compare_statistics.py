"""The statistics of ``mmcl compare`` on synthetic records, each case against an independent scipy or statsmodels
computation: tiny and mixed-sign differences, NaN, one seed, an all-failed loss, ties in two orders, two tasks with
very different effects, Holm across claims, ``at_least`` with a margin, ``bound`` per run, the aggregates across
tasks, what a test can detect with its seeds, and a report that keeps its earlier self when seeds are added."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import ttest_power

from mmcl.compare.aggregates import (
    BOOTSTRAP_RESAMPLES,
    interval,
    iqm,
    mean_of_means,
    normalise,
    performance_profile,
    probability_of_improvement,
)
from mmcl.compare.analysis import TaskInfo, task_table
from mmcl.compare.claims import verdicts
from mmcl.compare.records import CellRecord
from mmcl.compare.report import build_report
from mmcl.compare.statistics import POWER, detectable_difference, paired, seeds_needed, stratified


def cell_record(**values) -> CellRecord:
    """A synthetic record: ``values`` over an identity no study gave."""
    identity = {"id": f"{values['task']}/{values['loss']}/seed{values['seed']}", "definition": "", "modality": "vision",
                "dataset": "d", "metric": "value", "protocol": ""}  # fmt: skip
    return CellRecord(**{"status": "ok", **identity, **values})


def records_of(values: dict[str, list[float | None]], task: str = "t", modality: str = "vision") -> list[CellRecord]:
    """One record per (loss, seed); None: a failed cell."""
    return [cell_record(task=task, loss=loss, seed=seed, modality=modality, value=value,
                        status="failed" if value is None else "ok", error=None if value is not None else "boom")
            for loss, seeds in values.items() for seed, value in enumerate(seeds)]  # fmt: skip


INFO = TaskInfo("t", "vision", "d", "value", "")


# ---------------------------------------------------------------- the paired test


@pytest.mark.parametrize("d", [[1e-9, 0, 0], [0, 1e-9, 0], [5e-9, -5e-9, 0], [0.3, 0.1, 0.2], [2.0, 2.0, 2.0]])
def test_the_paired_test_is_scipys_without_a_shortcut(d):
    """An allclose shortcut gave [1e-9, 0, 0] p = 0 and [0, 1e-9, 0] p = 1, and mixed-sign noise p = 0."""
    b = {0: 80.0, 1: 81.0, 2: 79.0}
    a = {seed: b[seed] + d[seed] for seed in b}
    expected = stats.ttest_rel([a[s] for s in b], [b[s] for s in b]).pvalue
    assert paired(a, b).p == pytest.approx(expected, abs=1e-9)


def test_identical_scores_have_p_one_and_six_seeds_keep_the_t_test():
    same = {seed: 80.0 + seed for seed in range(3)}
    assert paired(same, dict(same)).p == 1.0  # scipy: 0/0, NaN; nothing differs
    x = {i: float(i) + 0.5 * (i % 3) for i in range(8)}
    y = {i: float(i) for i in range(8)}
    assert paired(x, y).p == pytest.approx(stats.ttest_rel(list(x.values()), list(y.values())).pvalue)


# ---------------------------------------------------------------- gaps


def test_nan_one_seed_and_failed_cells_are_gaps_never_results():
    records = records_of({
        "random_init": [50.0, 51.0, 52.0],
        "base": [80.0, 81.0, 79.5],
        "good": [84.0, 85.5, 83.0],
        "nan": [82.0, math.nan, 83.0],
        "single": [99.0, None, None],
        "failed": [None, None, None],
    })  # fmt: skip
    losses = ["random_init", "base", "good", "nan", "single", "failed"]
    table = task_table(records, INFO, losses, "base", [0, 1, 2])
    rows = {row.loss: row for row in table.rows}
    for loss in ("single", "failed"):
        row = rows[loss]
        assert not row.best and row.same_as_best is None and math.isnan(row.rank) and row.vs_baseline is None
        assert row.standing.startswith("n/a")
    assert rows["single"].summary.mean == 99.0, "the single seed's value is shown, never ranked best"
    assert rows["random_init"].same_as_best is None and math.isnan(rows["random_init"].rank)
    assert rows["nan"].summary.n == 2 and rows["nan"].values == {0: 82.0, 2: 83.0}
    assert rows["good"].best and [rows[loss].rank for loss in ("good", "nan", "base")] == [1.0, 2.0, 3.0]
    # the baseline family: good and nan (two paired seeds), Holm-adjusted as statsmodels does, nothing else
    raw = [stats.ttest_rel([84.0, 85.5, 83.0], [80.0, 81.0, 79.5]).pvalue, stats.ttest_rel([82, 83], [80, 79.5]).pvalue]
    adjusted = multipletests(raw, method="holm")[1]
    assert [rows["good"].vs_baseline.p_holm, rows["nan"].vs_baseline.p_holm] == pytest.approx(adjusted)
    assert rows["good"].vs_baseline.family == 2
    assert any("t/nan/seed1: its value is nan" in gap for gap in table.gaps)
    assert any("t/failed/seed0: failed: boom" in gap for gap in table.gaps)


def test_the_report_shows_gaps_as_na_and_leaves_them_out_of_the_csv_verdicts(tmp_path):
    records = records_of({"random_init": [50.0, 51.0, 52.0], "base": [80.0, 81.0, 79.5], "nan": [82.0, math.nan, 83.0],
                          "single": [99.0, None, None], "failed": [None, None, None]})  # fmt: skip
    (tmp_path / "records").mkdir()
    for record in records:
        (tmp_path / "records" / f"{record.id.replace('/', '__')}.json").write_text(record.to_json())
    build_report([tmp_path], plots=False)
    report = (tmp_path / "report.md").read_text()
    assert "+nan" not in report and "[, ]" not in report and "= " not in report.split("| single |")[1].split("\n")[0]
    assert "| single | 99.00 (1); n/a: one seed (seed 0)" in report
    assert "| failed | n/a: no result |" in report and "[81.63" not in report
    assert "(from 2 values)" in report, "an interval from two values is flagged"
    rows = {row["loss"]: row for row in csv.DictReader((tmp_path / "report.csv").open())}
    assert rows["random_init"]["same_as_best"] == "" and rows["random_init"]["rank"] == ""
    assert rows["single"]["same_as_best"] == "" and rows["failed"]["same_as_best"] == ""
    assert rows["single"]["best"] == "False" and rows["nan"]["best"] == "True"


@pytest.mark.parametrize("order", [["a", "b"], ["b", "a"]])
def test_ties_are_shared_whatever_the_order_of_seeds_and_losses(order):
    """The same scores summed in another order gave means 1 ulp apart: ranks 1 and 2 instead of 1.5 each, and the
    best went to the first loss listed."""
    assert np.mean([0.1, 0.2, 0.3]) != np.mean([0.3, 0.2, 0.1])  # the premise: float sums depend on the order
    records = records_of({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1], "c": [0.0, 0.1, 0.05]})
    rows = {row.loss: row for row in task_table(records, INFO, [*order, "c"], None, [0, 1, 2]).rows}
    assert rows["a"].rank == rows["b"].rank == 1.5 and rows["a"].best and rows["b"].best
    assert rows["c"].rank == 3.0 and not rows["c"].best
    # scores of two decimals with the same mean, 87.22, whose float means differ in the last bit
    assert math.fsum([87.2, 87.2, 87.26]) != math.fsum([87.2, 87.21, 87.25])
    records = records_of({"a": [87.2, 87.2, 87.26], "b": [87.2, 87.21, 87.25], "c": [87.0, 87.1, 87.3]})
    rows = {row.loss: row for row in task_table(records, INFO, [*order, "c"], None, [0, 1, 2]).rows}
    assert rows["a"].rank == rows["b"].rank == 1.5 and rows["a"].best and rows["b"].best


# ---------------------------------------------------------------- what a test can detect


def test_detectable_difference_and_seeds_needed_against_statsmodels():
    for n, level in ((3, 0.05), (6, 0.05 / 6), (5, 0.01)):  # statsmodels gives NaN at 3-4 seeds and alpha/6
        difference = detectable_difference(2.0, n, level)
        assert ttest_power(difference / 2.0, n, level, alternative="two-sided") == pytest.approx(POWER, abs=1e-6)
    needed = seeds_needed(0.5, 1.0, 0.05)
    assert ttest_power(0.5, needed, 0.05) >= POWER > ttest_power(0.5, needed - 1, 0.05)
    assert seeds_needed(0.0, 1.0) is None and math.isnan(detectable_difference(1.0, 1))


def test_inconclusive_comparisons_say_how_many_seeds_they_would_need():
    records = records_of({"base": [80.0, 81.0, 79.0], "other": [80.5, 81.2, 79.9]})
    row = next(r for r in task_table(records, INFO, ["base", "other"], "base", [0, 1, 2]).rows if r.loss == "other")
    d = np.array([0.5, 0.2, 0.9])
    assert row.vs_baseline.detectable == pytest.approx(detectable_difference(d.std(ddof=1), 3, 0.05))
    needed = row.vs_baseline.seeds_needed
    size = d.mean() / d.std(ddof=1)
    assert ttest_power(size, needed, 0.05) >= POWER > ttest_power(size, needed - 1, 0.05)


# ---------------------------------------------------------------- claims


def two_tasks(effects: tuple[list[float], list[float]], modality: str = "graph") -> list[CellRecord]:
    """Records of losses a and b on tasks t1 and t2, a - b per seed given by ``effects``."""
    out = []
    for task, differences in zip(("t1", "t2"), effects):
        base = [70.0 + 1.5 * seed for seed in range(len(differences))]
        out += records_of({"b": base, "a": [x + d for x, d in zip(base, differences)]}, task, modality)
    return out


TWO = [TaskInfo("t1", "graph", "g", "value", ""), TaskInfo("t2", "graph", "g", "value", "")]


def test_two_tasks_with_very_different_effects_are_stratified():
    """Pooling the (task, seed) differences as one sample counted the difference between the tasks as noise."""
    d1, d2 = [6.2, 5.8, 6.0], [-0.9, -1.1, -1.0]
    rows = verdicts([{"kind": "better", "loss": "a", "than": "b"}], two_tasks((d1, d2)), TWO)
    pooled = rows[-1]
    welch = stats.ttest_ind(d1, [-x for x in d2], equal_var=False)  # (m1 + m2) / sqrt(v1 + v2), the same df
    assert pooled.effect == pytest.approx((np.mean(d1) + np.mean(d2)) / 2) and pooled.p == pytest.approx(welch.pvalue)
    assert pooled.verdict == "supported" and [row.where for row in rows[:2]] == ["t1", "t2"]
    assert rows[0].p == pytest.approx(stats.ttest_1samp(d1, 0).pvalue) and rows[0].verdict == ""
    assert stats.ttest_1samp(d1 + d2, 0).pvalue > 0.05, "the pooled sample of old called this inconclusive"


def test_stratified_estimate_matches_welch_and_the_one_sample_test():
    d1, d2 = [1.0, 2.0, 4.0], [-3.0, -1.0, 0.5, 2.0]
    estimate = stratified([d1, d2])
    welch = stats.ttest_ind(d1, [-x for x in d2], equal_var=False)
    assert estimate.t == pytest.approx(welch.statistic) and estimate.df == pytest.approx(welch.df)
    one = stratified([d1], null=-1.0)
    assert one.p == pytest.approx(stats.ttest_1samp(d1, -1.0).pvalue) and one.df == 2


def test_holm_runs_across_the_claims_of_a_study():
    records = two_tasks(([1.0, 1.3, 0.8], [1.1, 0.9, 1.2])) + records_of(
        {"b": [60.0, 61.0, 62.0], "a": [60.4, 61.9, 62.65]}, "t3", "vision"
    )
    infos = [*TWO, TaskInfo("t3", "vision", "d", "value", "")]
    claims = [
        {"kind": "better", "loss": "a", "than": "b"},
        {"kind": "at_least", "loss": "a", "than": "b", "margin": 0.05},
    ]
    rows = [row for row in verdicts(claims, records, infos) if row.tested]
    assert len(rows) == 4  # two claims x two modalities: one family
    assert [row.p_holm for row in rows] == pytest.approx(multipletests([row.p for row in rows], method="holm")[1])
    vision = [row for row in rows if row.where.startswith("vision")][0]
    assert vision.p < 0.05 <= vision.p_holm and vision.verdict == "inconclusive at this budget"


def test_at_least_is_non_inferiority_with_a_margin():
    d = [-0.30, -0.25, -0.35, -0.28]
    records = records_of({"b": [80.0, 81.0, 79.0, 80.5], "a": [80.0 - 0.30, 81.0 - 0.25, 79.0 - 0.35, 80.5 - 0.28]})
    claim = {"kind": "at_least", "loss": "a", "than": "b"}
    (within,) = verdicts([{**claim, "margin": 1.0}], records, [INFO])
    assert within.verdict == "supported" and within.ci[0] > -1.0
    assert within.p == pytest.approx(stats.ttest_1samp(d, -1.0).pvalue)
    (tight,) = verdicts([{**claim, "margin": 0.1}], records, [INFO])
    assert tight.verdict == "not supported (below by more than the margin)" and tight.ci[1] < -0.1
    (better,) = verdicts([{"kind": "better", "loss": "a", "than": "b"}], records, [INFO])
    assert better.verdict == "not supported (the opposite holds)"


def test_bound_claims_take_the_run_as_the_unit_per_training_loss():
    """240 logged steps of six runs were one binomial sample, mixing runs trained with either loss."""

    def run(loss: str, seed: int, held: int, steps: int = 40) -> CellRecord:
        curves = [{"step": i, "lo": 1.0, "hi": 2.0 if i < held else 0.5} for i in range(steps)]
        return cell_record(task="t", loss=loss, seed=seed, value=1.0, curves=curves)

    records = [run("h", 0, 9), run("h", 1, 2), run("h", 2, 4), *(run("n", seed, 40) for seed in range(3)),
               run("m", 0, 40), run("m", 1, 10), run("k", 0, 24), run("k", 1, 4), run("k", 2, 4)]  # fmt: skip
    other = [cell_record(task="u", loss="n", seed=0, value=1.0, curves=[{"step": 1, "loss": 3.0}])]
    infos = [INFO, TaskInfo("u", "vision", "d", "value", "")]
    rows = {row.where: row for row in verdicts([{"kind": "bound", "lower": "lo", "upper": "hi"}], records + other,
                                               infos)}  # fmt: skip
    h, n, m = rows["t, trained with h"], rows["t, trained with n"], rows["t, trained with m"]
    assert h.verdict == "not supported" and h.detail == "0.225, 0.050, 0.100" and h.n == 3
    assert n.verdict == "supported" and n.effect == 1.0
    assert n.ci == pytest.approx(tuple(stats.binomtest(3, 3).proportion_ci(method="exact")))
    assert m.verdict.startswith("inconclusive") and not any(row.tested for row in rows.values())
    assert rows["t, trained with k"].verdict == "inconclusive (holds throughout in 0 of 3 runs)"  # one run: 60%
    assert rows["u"].verdict.startswith("n/a: no run of u logged both lo and hi")


# ---------------------------------------------------------------- aggregates across tasks


def test_normalised_scores_iqm_and_probability_of_improvement_against_scipy():
    values = {"random_init": [50.0, 52.0, 51.0], "base": [80.0, 81.0, 79.0], "good": [84.0, 86.0, 83.0, 85.0]}
    rows = task_table(records_of(values), INFO, list(values), "base", [0, 1, 2, 3]).rows
    task = normalise(rows, "random_init")
    low, high = np.mean(values["random_init"]), np.mean(values["good"])
    assert task.runs["base"] == pytest.approx((np.array(values["base"]) - low) / (high - low))
    x = [np.array([0.1, 0.9, 0.5, 0.4]), np.array([1.2, -0.3, 0.7])]
    y = [np.array([0.2, 0.3, 0.5]), np.array([0.0, 0.7, 0.1])]
    assert float(iqm(x)) == pytest.approx(stats.trim_mean(np.concatenate(x), 0.25))
    assert float(mean_of_means(x)) == pytest.approx((x[0].mean() + x[1].mean()) / 2)
    u = [stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)) for a, b in zip(x, y)]
    assert probability_of_improvement(x, y).value == pytest.approx(np.mean(u))  # ties (0.5, 0.7) count a half


def test_stratified_bootstrap_agrees_with_scipys_percentile_bootstrap():
    x = [np.array([0.1, 0.9, 0.5, 0.4, 0.8]), np.array([1.2, -0.3, 0.7, 0.2])]
    ours = interval(x, mean_of_means)

    def statistic(a, b, axis=-1):  # scipy resamples each sample on its own: the stratified bootstrap
        return (np.mean(a, axis=axis) + np.mean(b, axis=axis)) / 2

    theirs = stats.bootstrap(tuple(x), statistic, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                             rng=np.random.default_rng(123)).confidence_interval  # fmt: skip
    assert ours.low == pytest.approx(theirs.low, abs=0.03) and ours.high == pytest.approx(theirs.high, abs=0.03)
    assert interval(x, mean_of_means) == ours, "seeded: the same interval every time"


def test_performance_profile_is_the_fraction_of_runs_above_each_score():
    x = [np.array([0.1, 0.9, 0.5, 0.4]), np.array([1.2, -0.3])]
    profile = performance_profile(x, np.array([0.0, 0.45, 1.0]))
    assert profile == pytest.approx([(4 / 4 + 1 / 2) / 2, (2 / 4 + 1 / 2) / 2, (0 + 1 / 2) / 2])


# ---------------------------------------------------------------- optional stopping


def test_a_report_after_added_seeds_says_so_and_keeps_the_earlier_one(tmp_path):
    values = {"base": [80.0, 81.0, 79.0, 80.2], "other": [81.0, 81.5, 80.1, 80.9]}
    (tmp_path / "records").mkdir()

    def write(seeds: range) -> None:
        for record in records_of(values):
            if record.seed in seeds:
                (tmp_path / "records" / f"{record.id.replace('/', '__')}.json").write_text(record.to_json())

    write(range(3))
    build_report([tmp_path], plots=False)
    first = (tmp_path / "report.md").read_text()
    assert "Optional stopping" not in first
    build_report([tmp_path], plots=False)  # the same seeds: nothing kept
    assert not list(tmp_path.glob("report-seeds-*"))
    write(range(4))
    build_report([tmp_path], plots=False)
    assert (tmp_path / "report-seeds-0-1-2.md").read_text() == first and (tmp_path / "report-seeds-0-1-2.csv").is_file()
    assert (
        "**Optional stopping.** Reports were written before this one from seeds [0, 1, 2]"
        in (tmp_path / "report.md").read_text()
    )
    build_report([tmp_path], plots=False)  # rebuilt later: it still says so
    assert "Optional stopping" in (tmp_path / "report.md").read_text()


def test_the_performance_profile_figure_is_drawn(tmp_path):
    from mmcl.compare.aggregates import Normalised
    from mmcl.compare.figures import save
    from mmcl.compare.study_figures import draw_performance_profiles

    runs = {"a": np.array([0.2, 0.9, 1.1]), "b": np.array([0.0, 0.5, 0.7])}
    tasks = [Normalised("t", 50.0, 80.0, runs), Normalised("u", 1.0, 2.0, runs), Normalised("v", 0, 0, {}, "v: no")]
    infos = [INFO, TaskInfo("u", "graph", "g", "value", ""), TaskInfo("v", "graph", "g", "value", "")]
    png, svg = save(draw_performance_profiles(tasks, infos), tmp_path, "performance_profiles")
    assert png.read_bytes()[:4] == b"\x89PNG" and svg.read_text().lstrip().startswith("<?xml")
