"""The report of a study, from its records alone: ``report.md``, ``report.csv`` and the figures in ``plots/``.

``report.md`` leads with what a reader acts on: per task the best loss, the losses not distinguishable from it and
those below it, with their differences and intervals. Then the aggregates across tasks (normalised mean and IQM,
probability of improvement over the baseline; :mod:`~mmcl.compare.aggregates`) and mean ranks, the claims'
verdicts (:mod:`~mmcl.compare.claims`), each task's full table (mean +- standard deviation (n), 95% interval,
difference to the baseline with the paired t-test, Holm-corrected, what the test could detect with its seeds,
rank, cost) with its gaps listed under it, every cell without a result, and the figures. Every number is
recomputed from the records with scipy; ``report.csv`` holds the per-task rows at full precision.

The study definition comes from ``--study`` (a study file or packaged name: for stored results, which keep no
``study.yaml``), else from the folders' ``study.yaml`` (:mod:`~mmcl.compare.definition`, which refuses shards
of different definitions). Unreadable records are shown as gaps, never read as results. When seeds were added
after an earlier report, the new one says so and keeps the earlier one beside it (:mod:`~mmcl.compare.history`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mmcl.compare.aggregates import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Aggregate, aggregate_table
from mmcl.compare.analysis import (
    COARSE,
    Comparison,
    Row,
    TaskInfo,
    TaskTable,
    loss_order,
    mean_ranks,
    task_infos,
    task_table,
)
from mmcl.compare.claims import ClaimRow, check_claims, holm_family, verdicts
from mmcl.compare.definition import folder_study, load_study_file
from mmcl.compare.history import Stamp, claims_hash, keep_earlier
from mmcl.compare.records import RANDOM_INIT, CellRecord, Unreadable, scan_records, write_records_file
from mmcl.compare.statistics import ALPHA, FEW, POWER, TEST, Summary
from mmcl.compare.tuning_report import read_trials, tuning_figures, tuning_section
from mmcl.runs import write_atomically


def build_report(folders: list[Path], output: Path | None = None, plots: bool = True,
                 study: str | Path | None = None) -> Path:  # fmt: skip
    """Write the report of the records under ``folders`` (shards of one study merge) into ``output`` (default:
    the first folder); ``study``: the study file or packaged name to read the definition from (default: the
    folders' ``study.yaml``). Returns ``report.md``. Everything is checked before anything is written."""
    folders = [Path(folder) for folder in folders]
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"--report {folder}: no such study folder (it holds records/ or records.jsonl)")
    found, unreadable = scan_records(*folders)
    records = list(found.values())
    if not records:
        raise ValueError(f"no readable cell records under {[str(f) for f in folders]} (records/*.json or "
                         f"records.jsonl){_unreadable_hint(unreadable)}; run the study first")  # fmt: skip
    definition = load_study_file(study) if study is not None else folder_study(folders)
    _check_definition(definition, records, study)
    output = Path(output or folders[0])
    output.mkdir(parents=True, exist_ok=True)
    if folders != [output] or (output / "records").is_dir():  # stored results: their records.jsonl is the source
        write_records_file(output, *[f for f in folders if f != output])
    report = Report(definition or {}, records, unreadable, output.name, read_trials(*folders))
    figures = {}
    if plots:
        from mmcl.compare.study_figures import study_figures

        figures = study_figures(records, report.tables, report.infos, report.baseline, output / "plots",
                                report.normalised)  # fmt: skip
        figures.update(tuning_figures(report.trials, report.records, report.infos, output / "plots"))
    stamp, history = keep_earlier(output, report.stamp())
    write_atomically(output / "report.md", report.markdown(stamp, history, figures, output))
    write_atomically(output / "report.csv", report.csv())
    return output / "report.md"


def _unreadable_hint(unreadable: list[Unreadable]) -> str:
    return f"; unreadable: {unreadable[0].message()}" if unreadable else ""


def _check_definition(definition: dict, records: list[CellRecord], source: str | Path | None) -> None:
    """The records belong to the study (every task and loss of theirs is in it), and its claims read."""
    if not definition:
        return
    if not isinstance(definition, dict):
        raise ValueError(f"the study {source} is not a mapping with name, seeds, losses and tasks")
    tasks = [str(t.get("name")) for t in definition.get("tasks") or [] if isinstance(t, dict)]
    losses = loss_order([], definition)
    stray = sorted({f"task {r.task!r}" for r in records if r.task not in tasks} |
                   {f"loss {r.loss!r}" for r in records if r.loss not in losses})  # fmt: skip
    if stray:
        where = f"--study {source}" if source is not None else "the folders' study.yaml"
        raise ValueError(f"the records are not of the study in {where}: it lacks {stray[:5]} (its tasks: {tasks}, "
                         f"losses: {losses}); name the study the records were run with")  # fmt: skip
    check_claims(list(definition.get("claims") or []), [label for label in losses if label != RANDOM_INIT], tasks)


class Report:
    """Everything a report shows, computed once from the records."""

    def __init__(self, study: dict, records: list[CellRecord], unreadable: list[Unreadable], name: str,
                 trials: list[dict] | None = None):  # fmt: skip
        self.study, self.records, self.unreadable, self.name = study, records, unreadable, name
        self.trials = trials or []
        self.infos = task_infos(records, [str(t.get("name")) for t in study.get("tasks") or [] if isinstance(t, dict)])
        self.losses = loss_order(records, study)
        self.baseline = study.get("baseline") if study else None
        self.seeds = sorted({r.seed for r in records})
        lost = frozenset(u.cell for u in unreadable)
        self.tables = {info.task: task_table(records, info, self.losses, self.baseline, self.seeds, lost)
                       for info in self.infos}  # fmt: skip
        default = RANDOM_INIT if RANDOM_INIT in self.losses else None
        self.reference = study.get("reference", default) if study else default
        self.aggregates, self.normalised = [], []
        if self.reference is not None or self.baseline is not None:
            self.aggregates, self.normalised = aggregate_table(self.tables, self.infos, self.reference, self.baseline)
        self.claims = verdicts(list(study.get("claims") or []), records, self.infos) if study else []

    def stamp(self) -> Stamp:
        return Stamp(self.seeds, claims_hash(list(self.study.get("claims") or [])))

    def markdown(self, stamp: Stamp, history: list[str], figures: dict[str, list[Path]], output: Path) -> str:
        lines = [f"# Study: {self.study.get('name', self.name)}", "", stamp.marker(), ""]
        if self.study.get("description"):
            lines += [str(self.study["description"]).strip(), ""]
        lines += self._provenance() + [line for text in history for line in (text, "")]
        lines += _summary_section(self.tables, self.infos)
        lines += _aggregate_section(self.aggregates, self.normalised, self.reference, self.baseline)
        lines += _rank_section(self.tables, self.infos)
        lines += tuning_section(self.trials, self.records, self.infos)
        if self.claims:
            lines += _claims_section(self.claims)
        for info in self.infos:
            lines += _task_section(self.tables[info.task], self.baseline)
        lines += _gaps_section(self.records, self.unreadable)
        if figures:
            lines += _figures_section(figures, output)
        return "\n".join(lines) + "\n"

    def _provenance(self) -> list[str]:
        ok = sum(r.ok for r in self.records)
        planned = self.study.get("seeds")
        seeds = f"seeds {self.seeds}" + (f" (the study's: {planned})" if planned and planned != self.seeds else "")
        versions = self.records[0].versions
        return [f"{ok} cells ok, {len(self.records) - ok} failed{self._unreadable_count()}; {seeds}; mmcl "
                f"{versions.get('mmcl', '?')}, torch {versions.get('torch', '?')}. Every number below is recomputed "
                "from the records with scipy (`mmcl compare --report`).", ""]  # fmt: skip

    def _unreadable_count(self) -> str:
        return f", {len(self.unreadable)} unreadable" if self.unreadable else ""

    def csv(self) -> str:
        return _csv(self.infos, self.tables)


# ---------------------------------------------------------------- formatting


def _number(value: float | None, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _interval(low: float, high: float, digits: int = 2) -> str:
    return f"[{_number(low, digits)}, {_number(high, digits)}]" if not math.isnan(low) else ""


def _flag(summary: Summary) -> str:
    """The mark of an interval from fewer than FEW values."""
    return f" (from {summary.n} values)" if summary.few else ""


def _difference(comparison: Comparison) -> str:
    diff = comparison.paired.diff
    return f"{diff.mean:+.2f} {_interval(*diff.ci)}{_flag(diff)}"


def _detectable(comparison: Comparison | None) -> str:
    if comparison is None:
        return ""
    return "inf" if math.isinf(comparison.detectable) else _number(comparison.detectable)


def _seeds_needed(comparison: Comparison | None) -> str:
    if comparison is None or comparison.distinguishable:
        return ""
    return str(comparison.seeds_needed) if comparison.seeds_needed is not None else "> 1000"


# ---------------------------------------------------------------- sections


def _summary_section(tables: dict[str, TaskTable], infos: list[TaskInfo]) -> list[str]:
    lines = [
        "## Summary: the best loss of each task",
        "",
        f"Per task, the best mean and its 95% interval; each other loss's paired difference to it (mean over seeds "
        f"and 95% interval), split by the {TEST} with Holm's correction across the task's losses (p < {ALPHA}); "
        f"and the range of differences that this test finds with {POWER:.0%} probability at these seeds "
        "(detectable). *Not distinguishable* is no evidence of equality: differences below the detectable ones are "
        "likely missed.",
        "",
        "| task | best: mean [95% CI] | not distinguishable from the best | below the best | detectable | n/a |",
        "|---|---|---|---|---|---|",
    ]
    for info in infos:
        rows = tables[info.task].rows
        best = "; ".join(f"**{r.loss}** {_number(r.summary.mean)} {_interval(*r.summary.ci)}{_flag(r.summary)}"
                         for r in rows if r.best)  # fmt: skip
        same = "; ".join(f"{r.loss} {_difference(r.vs_best)}" for r in rows if r.vs_best and not r.best
                         and not r.vs_best.distinguishable)  # fmt: skip
        below = "; ".join(f"{r.loss} {_difference(r.vs_best)}" for r in rows if r.vs_best and r.vs_best.distinguishable)
        detectable = sorted(r.vs_best.detectable for r in rows if r.vs_best)
        span = _span([_number(d) for d in detectable])
        missing = "; ".join(f"{r.loss} ({r.standing.removeprefix('n/a: ').split(':')[0]})" for r in rows
                            if not r.untrained and not r.best and r.vs_best is None)  # fmt: skip
        lines.append(f"| {info.task} (`{info.metric}`) | {best or 'n/a'} | {same} | {below} | {span} | {missing} |")
    return lines + [""]


def _span(values: list[str]) -> str:
    """The first and last of sorted values ("1.00-3.00"), one when they are the same."""
    return "-".join(dict.fromkeys([values[0], values[-1]])) if values else ""


def _aggregate_section(aggregates: list[Aggregate], normalised, reference: str | None,
                       baseline: str | None) -> list[str]:  # fmt: skip
    if not aggregates:
        return []
    lines = ["## Aggregates across tasks", ""]
    columns = []
    if reference is not None:
        columns += ["mean [95% CI]", "IQM [95% CI]"]
        lines.append(
            f"Normalised score of a run: (score - {reference}'s mean) / (best mean - {reference}'s mean) on its task "
            "(0: the reference, 1: the best loss's mean). *Mean*: of the per-task means, each task weighted equally; "
            "*IQM*: the interquartile mean of the runs pooled over the tasks (Agarwal et al. 2021)."
        )
    else:
        lines.append("No normalised mean or IQM: the study has no random_init row and names no `reference`.")
    if baseline is not None:
        columns.append(f"P(> {baseline}) [95% CI]")
        lines.append(
            f"*P(> {baseline})*: the probability that a run of the loss scores above a run of {baseline} on the same "
            "task (Mann-Whitney U / (n m), ties a half), averaged over the tasks; 0.5: no difference."
        )
    lines += [
        f"95% stratified-bootstrap percentile intervals: the seeds resampled within each task ({BOOTSTRAP_RESAMPLES} "
        f"resamples, numpy seed {BOOTSTRAP_SEED}; `mmcl.compare.aggregates`). {_resamples_caveat(aggregates)}",
        "",
    ]
    left_out = [n.left_out for n in normalised if n.left_out]
    if left_out:
        lines += ["Tasks left out of the normalised scores: " + "; ".join(left_out) + ".", ""]
    lines += ["| over | loss | tasks | runs | " + " | ".join(columns) + " |", "|---" * (len(columns) + 4) + "|"]
    for a in aggregates:
        estimates = ([a.mean, a.iqm] if reference is not None else []) + ([a.improvement] if baseline else [])
        if a.gap:
            lines.append(f"| {a.group} | {a.loss} | | | n/a: {a.gap} |" + " |" * (len(columns) - 1))
        elif any(estimates):
            lines.append(f"| {a.group} | {a.loss} | {len(a.tasks)} | {a.runs} | "
                         + " | ".join(_estimate(e) for e in estimates) + " |")  # fmt: skip
    return lines + [""]


def _resamples_caveat(aggregates: list[Aggregate]) -> str:
    """How few distinct resamples the task with the fewest runs holds (n runs: C(2n - 1, n) multisets)."""
    fewest = min((a.runs // max(1, len(a.tasks)) for a in aggregates if a.runs), default=0)
    if not fewest or math.comb(2 * fewest - 1, fewest) >= 1000:
        return ""
    return (f"With {fewest} runs a task has only {math.comb(2 * fewest - 1, fewest)} distinct resamples: read the "
            "intervals as rough.")  # fmt: skip


def _estimate(estimate) -> str:
    return "" if estimate is None else f"{estimate.value:.2f} [{estimate.low:.2f}, {estimate.high:.2f}]"


def _rank_section(tables: dict[str, TaskTable], infos: list[TaskInfo]) -> list[str]:
    ranked = mean_ranks(tables, infos)
    modalities = list(dict.fromkeys(info.modality for info in infos))
    lines = ["## Mean rank (1 = best; per task by mean score, ties share a rank; gaps unranked)", "",
             "| loss | " + " | ".join(modalities) + " | all tasks |", "|---" * (len(modalities) + 2) + "|"]  # fmt: skip
    for loss, groups in sorted(ranked.items(), key=lambda item: item[1].get("all", math.inf)):
        lines.append(f"| {loss} | " + " | ".join(_number(groups.get(m, math.nan), 2) for m in modalities)
                     + f" | {_number(groups.get('all', math.nan), 2)} |")  # fmt: skip
    return lines + [""]


def _claims_section(claims: list[ClaimRow]) -> list[str]:
    lines = ["## Claims", ""]
    tested = [c for c in claims if c.kind != "bound"]
    if tested:
        lines += _table(
            "The claims as the study states them (a change after an earlier report is noted at the top). A task's "
            "row (no verdict) is its paired differences' mean, t interval and p; a verdict is the stratified "
            "estimate over a modality's tasks (each task weighted equally, within-task variances, "
            f"Welch-Satterthwaite degrees of freedom). Holm's correction runs across the {holm_family(claims)} "
            f"verdicts with a p-value of this study's claims (one family): *supported* when p (Holm) < {ALPHA} and "
            "the effect lies on the claimed side (for `at_least`, above -margin), *not supported* when it lies on "
            "the other, *inconclusive* otherwise.",
            ["claim", "where", "effect", "95% interval", "n", "p", "p (Holm)", "verdict"],
            [[c.claim, c.where, _number(c.effect, 3), _interval(*c.ci, 3), str(c.n), _p(c.p), _p(c.p_holm), c.verdict]
             for c in tested],
        )  # fmt: skip
    bounds = [c for c in claims if c.kind == "bound"]
    if bounds:
        lines += _table(
            "Bounds, with the run as the unit (its logged steps are not independent trials): per task and training "
            "loss, the share of runs where the bound holds at every logged step with its Clopper-Pearson 95% "
            "interval, and the fraction of logged steps where it holds in each run (by seed). Outside the Holm family.",
            ["claim", "where", "runs", "held throughout [95% CI]", "fraction of steps per run", "verdict"],
            [[c.claim, c.where, str(c.n), f"{_number(c.effect, 3)} {_interval(*c.ci, 3)}", c.detail, c.verdict]
             for c in bounds],
        )  # fmt: skip
    return lines


def _table(intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A paragraph, then a markdown table."""
    return [intro, "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]  # fmt: skip


def _task_section(table: TaskTable, baseline: str | None) -> list[str]:
    info, rows = table.info, table.rows
    family = next((r.vs_baseline.family for r in rows if r.vs_baseline), 0)
    lines = [
        f"## {info.task} ({info.modality}, {info.dataset})",
        "",
        f"Score: `{info.metric}`: {info.protocol}. Mean +- standard deviation over seeds (n) and t-based 95% "
        f"interval of the mean (flagged when from fewer than {FEW} values). **Bold**: the best mean (ties share "
        "it); `=`: not distinguishable from it; `<`: below it (see the summary)."
        + (f" Differences to `{baseline}` paired by seed, {TEST}, Holm-corrected across its {family} comparisons; "
           f"*detectable*: the difference found with {POWER:.0%} probability at {ALPHA}/{family} (Holm's strictest "
           "step) with these seeds and this paired standard deviation; *seeds needed*: roughly how many seeds the "
           "observed difference would need there, were its standard deviation the true one." if family else ""),
        "",
        "| loss | mean +- std (n) | 95% CI | diff. to baseline | p | p (Holm) | detectable | seeds needed | rank | "
        "train s | eval s | memory MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    lines += [_task_row(row) for row in rows] + [""]
    if table.coarse:
        lines += [
            f"Every value of this task is a multiple of {COARSE} (stored rounded, or a coarse score): differences "
            "and spreads near it measure the rounding, and equal values may be its ties.",
            "",
        ]
    notes = [f"- {gap}" for gap in table.gaps] + [f"- {note}" for note in table.notes]
    return lines + (["Gaps (not in the means, ranks or tests):", ""] + notes + [""] if notes else [])


def _task_row(row: Row) -> str:
    s, diff = row.summary, row.vs_baseline
    if not s.n:
        return f"| {row.loss} | {row.standing} | | | | | | | | | | |"
    mean = f"{_number(s.mean)} +- {_number(s.std)} ({s.n})" if s.n > 1 else f"{_number(s.mean)} ({s.n})"
    if row.best:
        mean = f"**{mean}**"
    elif row.same_as_best is not None:
        mean = f"{'=' if row.same_as_best else '<'} {mean}"
    elif not row.untrained:
        mean = f"{mean}; {row.standing}"
    cells = [
        row.loss, mean, _interval(*s.ci) + _flag(s), _difference(diff) if diff else "", _p(diff.paired.p) if diff
        else "", _p(diff.p_holm) if diff else "", _detectable(diff), _seeds_needed(diff), _number(row.rank, 1),
        _number(row.cost["train_seconds"], 1), _number(row.cost["eval_seconds"], 1),
        _number(row.cost["peak_memory_mb"], 0),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _gaps_section(records: list[CellRecord], unreadable: list[Unreadable]) -> list[str]:
    failed = [r for r in records if not r.ok]
    if not failed and not unreadable:
        return []
    lines = ["## Failed and unreadable cells (gaps in the tables)", "", "| cell | error |", "|---|---|"]
    lines += [f"| {r.id} | {(r.error or 'no error recorded').splitlines()[0][:200]} |" for r in failed]
    lines += [f"| {u.cell} | {u.message()} |" for u in unreadable]
    return lines + [""]


def _figures_section(figures: dict[str, list[Path]], output: Path) -> list[str]:
    lines = ["## Figures", ""]
    lines += [f"- {name.replace('_', ' ')}: [PNG]({paths[0].relative_to(output)}), "
              f"[SVG]({paths[1].relative_to(output)})" for name, paths in figures.items()]  # fmt: skip
    return lines + ["", f"![scores]({figures['scores'][0].relative_to(output)})", ""]


def _csv(infos: list[TaskInfo], tables: dict[str, TaskTable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "modality", "dataset", "metric", "loss", "n", "mean", "std", "ci_low", "ci_high",
                     "standing", "diff_to_best", "p_best_holm", "diff_to_baseline", "diff_ci_low", "diff_ci_high", "p",
                     "p_holm", "detectable", "seeds_needed", "test", "best", "same_as_best", "rank", "train_seconds",
                     "eval_seconds", "peak_memory_mb"])  # fmt: skip
    for info in infos:
        for row in tables[info.task].rows:
            s, best, diff = row.summary, row.vs_best, row.vs_baseline
            writer.writerow([
                info.task, info.modality, info.dataset, info.metric, row.loss, s.n, s.mean, s.std, *s.ci,
                row.standing, best.paired.diff.mean if best else "", best.p_holm if best else "",
                diff.paired.diff.mean if diff else "", *(diff.paired.diff.ci if diff else ("", "")),
                diff.paired.p if diff else "", diff.p_holm if diff else "", diff.detectable if diff else "",
                _seeds_needed(diff), TEST if diff or best else "", row.best,
                "" if row.same_as_best is None else row.same_as_best, "" if math.isnan(row.rank) else row.rank,
                *row.cost.values(),
            ])  # fmt: skip
    return buffer.getvalue()
