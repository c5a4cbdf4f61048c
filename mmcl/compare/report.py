"""The report of a study, from its records alone: ``report.md``, ``report.csv`` and the figures in ``plots/``.

Per task (its evaluation protocol in the header): each loss's mean +- standard deviation (n) and 95% confidence
interval; the paired difference to the baseline with its test over seeds and the Holm-corrected p-value; the
best in bold and the losses not significantly different from it marked; rank and cost. Then the mean rank per
modality and over all tasks, the claims' verdicts, the failed cells and the figures.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import yaml

from mmcl.compare.analysis import Row, loss_order, mean_ranks, task_infos, task_table
from mmcl.compare.claims import verdicts
from mmcl.compare.records import RANDOM_INIT, CellRecord, read_records, write_records_file
from mmcl.runs import write_atomically


def build_report(folders: list[Path], output: Path | None = None, plots: bool = True) -> Path:
    """Write the report of the records under ``folders`` (shards of one study merge) into ``output`` (default:
    the first folder); returns ``report.md``."""
    output = output or folders[0]
    output.mkdir(parents=True, exist_ok=True)
    records = list(read_records(*folders).values())
    if not records:
        raise ValueError(f"no cell records under {[str(f) for f in folders]} (records/*.json); run the study first")
    study = next((yaml.safe_load((f / "study.yaml").read_text()) for f in folders if (f / "study.yaml").is_file()), {})
    write_records_file(output, *[f for f in folders if f != output])
    infos = task_infos(records)
    losses = loss_order(records, study)
    baseline = study.get("baseline") if study else None
    tables = {info.task: task_table(records, info.task, losses, baseline) for info in infos}
    figures = {}
    if plots:
        from mmcl.compare.study_figures import study_figures

        figures = study_figures(records, tables, infos, baseline, output / "plots")
    claims = verdicts(list(study.get("claims") or []), records, infos) if study else []
    text = render(study, records, infos, tables, baseline, claims, figures, output)
    write_atomically(output / "report.md", text)
    write_atomically(output / "report.csv", _csv(infos, tables))
    return output / "report.md"


def render(study: dict, records: list[CellRecord], infos, tables: dict[str, list[Row]], baseline: str | None,
           claims: list[dict], figures: dict[str, list[Path]], output: Path) -> str:  # fmt: skip
    ok = sum(r.ok for r in records)
    lines = [f"# Study: {study.get('name', output.name)}", ""]
    if study.get("description"):
        lines += [study["description"].strip(), ""]
    lines += [f"{ok} cells ok, {len(records) - ok} failed; seeds {sorted({r.seed for r in records})}; "
              f"mmcl {records[0].versions.get('mmcl', '?')}, torch {records[0].versions.get('torch', '?')}.",
              ""]  # fmt: skip
    for info in infos:
        lines += _task_section(info, tables[info.task], baseline)
    lines += _rank_section(tables, infos)
    if claims:
        lines += _claims_section(claims)
    failed = [r for r in records if not r.ok]
    if failed:
        lines += ["## Failed cells (gaps in the tables)", "", "| cell | error |", "|---|---|"]
        lines += [f"| {r.id} | {(r.error or 'no error recorded').splitlines()[0][:200]} |" for r in failed] + [""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"- {name.replace('_', ' ')}: [PNG]({paths[0].relative_to(output)}), "
                  f"[SVG]({paths[1].relative_to(output)})" for name, paths in figures.items()]  # fmt: skip
        lines += ["", f"![scores]({figures['scores'][0].relative_to(output)})", ""]
    return "\n".join(lines) + "\n"


def _number(value: float, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _task_section(info, rows: list[Row], baseline: str | None) -> list[str]:
    test = next((row.vs_baseline.test for row in rows if row.vs_baseline is not None), "paired t")
    lines = [
        f"## {info.task} ({info.modality}, {info.dataset})",
        "",
        f"Score: `{info.metric}`: {info.protocol}. Mean +- standard deviation over seeds (n), t-based 95% interval;"
        f" differences to `{baseline}` paired by seed ({test} test, Holm-corrected across losses). **Bold**: the "
        "best mean; `=`: not significantly different from it (p >= 0.05 after Holm).",
        "",
        "| loss | mean +- std (n) | 95% CI | diff. to baseline | p | p (Holm) | rank | train s | eval s | memory MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.values:
            lines.append(f"| {row.loss} | (no result) | | | | | | | | |")
            continue
        s = row.summary
        mean = f"{_number(s.mean)} +- {_number(s.std)} ({s.n})"
        mean = f"**{mean}**" if row.best else f"= {mean}" if row.same_as_best and row.loss != RANDOM_INIT else mean
        diff = row.vs_baseline
        cells = [
            row.loss, mean, f"[{_number(s.ci[0])}, {_number(s.ci[1])}]" if s.n > 1 else "",
            f"{diff.diff.mean:+.2f} [{_number(diff.diff.ci[0])}, {_number(diff.diff.ci[1])}]" if diff else "",
            _p(diff.p) if diff else "", _p(row.p_holm), _number(row.rank, 1),
            _number(row.cost["train_seconds"], 1), _number(row.cost["eval_seconds"], 1),
            _number(row.cost["peak_memory_mb"], 0),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _rank_section(tables: dict[str, list[Row]], infos) -> list[str]:
    ranked = mean_ranks(tables, infos)
    modalities = list(dict.fromkeys(info.modality for info in infos))
    lines = ["## Mean rank (1 = best; per task by mean score)", "",
             "| loss | " + " | ".join(modalities) + " | all tasks |", "|---" * (len(modalities) + 2) + "|"]  # fmt: skip
    for loss, groups in sorted(ranked.items(), key=lambda item: item[1].get("all", math.inf)):
        lines.append(f"| {loss} | " + " | ".join(_number(groups.get(m, math.nan), 2) for m in modalities)
                     + f" | {_number(groups.get('all', math.nan), 2)} |")  # fmt: skip
    return lines + [""]


def _claims_section(claims: list[dict]) -> list[str]:
    lines = ["## Claims", "", "| claim | where | effect | 95% interval | n | verdict |", "|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | {c['group']} | {_number(c['effect'], 3)} | "
                     f"[{_number(c['ci'][0], 3)}, {_number(c['ci'][1], 3)}] | {c['n']} | {c['verdict']} |")  # fmt: skip
    return lines + [""]


def _csv(infos, tables: dict[str, list[Row]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "modality", "dataset", "metric", "loss", "n", "mean", "std", "ci_low", "ci_high",
                     "diff_to_baseline", "p", "p_holm", "best", "same_as_best", "rank", "train_seconds",
                     "eval_seconds", "peak_memory_mb"])  # fmt: skip
    for info in infos:
        for row in tables[info.task]:
            diff = row.vs_baseline
            writer.writerow([info.task, info.modality, info.dataset, info.metric, row.loss, row.summary.n,
                             row.summary.mean, row.summary.std, *row.summary.ci, diff.diff.mean if diff else "",
                             diff.p if diff else "", row.p_holm, row.best, row.same_as_best, row.rank,
                             *row.cost.values()])  # fmt: skip
    return buffer.getvalue()
