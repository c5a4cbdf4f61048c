"""A study's earlier reports: optional stopping made visible.

A report's p-values and intervals assume that its seeds were fixed before any result was seen. Adding seeds after
reading a report and reporting again (optional stopping) breaks that assumption: a verdict that appears only with
the added seeds may be the looks, not the losses. So each ``report.md`` carries, in an HTML comment, the seeds
and claims it was computed from, and the seeds of the reports before it. When the next report's seeds or claims
differ, the earlier ``report.md`` and ``report.csv`` are kept beside it as ``report-seeds-<seeds>.md`` and
``.csv`` and the new report says so. Reports written before this marker are read by their header line
(``seeds [0, 1, 2]``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

_MARKER = re.compile(r"<!-- mmcl-report (\{.*?\}) -->")
_LEGACY_SEEDS = re.compile(r"; seeds \[([\d, ]*)\];")


@dataclass(frozen=True)
class Stamp:
    """What a report was computed from: its seeds and a hash of its claims; and the stamps of the reports before."""

    seeds: list[int]
    claims: str | None
    earlier: list[dict] = field(default_factory=list)  # [{"seeds": [...], "claims": hash}, ...], oldest first

    def marker(self) -> str:
        values = {"seeds": self.seeds, "claims": self.claims, "earlier": self.earlier}
        return f"<!-- mmcl-report {json.dumps(values)} -->"


def claims_hash(claims: list) -> str:
    return hashlib.sha1(json.dumps(claims, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_stamp(report: Path) -> Stamp | None:
    """The stamp of an existing report (None: no report, or one that names no seeds)."""
    if not report.is_file():
        return None
    text = report.read_text(errors="replace")
    found = _MARKER.search(text)
    if found:
        values = json.loads(found.group(1))
        return Stamp(list(values["seeds"]), values.get("claims"), list(values.get("earlier", [])))
    legacy = _LEGACY_SEEDS.search(text)
    if legacy:
        return Stamp([int(s) for s in legacy.group(1).split(",") if s.strip()], None)
    return None


def kept_name(seeds: list[int], suffix: str) -> str:
    return f"report-seeds-{'-'.join(map(str, seeds))}{suffix}"


def keep_earlier(output: Path, stamp: Stamp) -> tuple[Stamp, list[str]]:
    """Keep the earlier report of ``output`` beside the new one when its seeds or claims differ from ``stamp``'s;
    returns the new report's stamp (with the earlier ones) and the lines that say what changed since them."""
    previous = read_stamp(output / "report.md")
    if previous is None:
        return stamp, []
    earlier = previous.earlier
    claims_changed = None not in (previous.claims, stamp.claims) and previous.claims != stamp.claims
    if previous.seeds != stamp.seeds or claims_changed:
        for suffix in (".md", ".csv"):
            if (output / f"report{suffix}").is_file():
                (output / f"report{suffix}").replace(output / kept_name(previous.seeds, suffix))
        earlier = [*earlier, {"seeds": previous.seeds, "claims": previous.claims}]
    stamp = Stamp(stamp.seeds, stamp.claims, earlier)
    return stamp, _lines(stamp)


def _lines(stamp: Stamp) -> list[str]:
    """What the report must say about the reports before it."""
    lines = []
    other_seeds = [e["seeds"] for e in stamp.earlier if e["seeds"] != stamp.seeds]
    if other_seeds:
        kept = ", ".join(f"seeds {seeds} (`{kept_name(seeds, '.md')}`)" for seeds in other_seeds)
        lines.append(
            f"**Optional stopping.** Reports were written before this one from {kept}; this one reads seeds "
            f"{stamp.seeds}. Its p-values and intervals assume the seeds were fixed before any result was seen: a "
            "verdict that appears only after seeds were added may come from the looks, not the losses. Confirm it "
            "with seeds fixed in advance (a new study folder), or correct for the looks (e.g. alpha spending)."
        )
    changed = [e["seeds"] for e in stamp.earlier if None not in (e.get("claims"), stamp.claims)
               and e["claims"] != stamp.claims]  # fmt: skip
    if changed:
        kept = ", ".join(f"`{kept_name(seeds, '.md')}`" for seeds in changed)
        lines.append(
            f"**The claims changed** after an earlier report ({kept}) was written: their verdicts were not fixed "
            "before those results were seen."
        )
    return lines
