"""A study's records: what the runner hands a cell (:class:`CellSpec`) and what a cell leaves (:class:`CellRecord`),
each one typed dataclass with ``to_json``/``from_json``, and the files that hold them in a study folder.

A study folder holds::

    study.yaml        the study as run (variables filled in); a changed definition is refused per cell
    specs/            one JSON spec per cell to run (written by the runner, read by the cell's process), and the
                      cell's lock (<cell>.lock: a second copy of a running cell waits for the first)
    records/          one JSON record per finished cell (ok or failed), written by the cell's own process, or by
                      the runner as lost when the cell's worker died first
    progress.json     how far the last run is (mmcl.compare.progress; progress-shard-I-of-N.json for a shard)
    workers.log       the local executor's workers' output between cells; slurm/: submitit's job files
    records.jsonl     all records, one per line, the same schema for every modality (read in place of records/
                      where a folder has none: a study's stored results)
    tune.journal, trials.jsonl, trials/   a tuned study's searches (mmcl.compare.search)
    runs/<task>/<loss>/seed<k>/   each cell's run folder (config, metrics, checkpoints, eval.json; seed<k>.log)
    report.md, report.csv, plots/ (PNG and SVG); report-seeds-<seeds>.md/.csv: a report of fewer seeds, kept
                      when seeds were added after it (mmcl.compare.report)

Reading records needs neither torch nor a modality, so reports are rebuilt quickly anywhere.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmcl.runs import RANDOM_INIT, write_atomically

__all__ = [
    "CURVE_KEYS",
    "NUMBER_FIELDS",
    "REPRESENTATION_KEYS",
    "RANDOM_INIT",
    "CellRecord",
    "CellSpec",
    "Unreadable",
    "read_records",
    "record_path",
    "scan_records",
    "write_records_file",
]

#: Diagnostics kept in a record's training curves (those the plots draw); every monitored loss is kept too, as
#: ``monitor/<loss name>``.
CURVE_KEYS = ("loss", "lr", "pos_cos_mean", "neg_cos_mean", "tau", "embedding_rank")
#: A record's representation metrics, ``<layer>.<metric>`` (alignment and uniformity of Wang & Isola 2020).
REPRESENTATION_KEYS = tuple(f"{layer}.{key}" for layer in ("backbone", "head")
                            for key in ("alignment", "uniformity", "effective_rank"))  # fmt: skip
#: The record fields that hold a number: a claim's metric may name them.
NUMBER_FIELDS = ("value", "steps", "samples_seen", "train_seconds", "eval_seconds", "peak_memory_mb", "seconds")


@dataclass(frozen=True)
class CellSpec:
    """One cell as the runner hands it to its process: who it is, its resolved config and where it writes."""

    id: str
    definition: str  # a hash of what the cell computes (mmcl.compare.study.Cell.definition)
    task: str
    modality: str
    dataset: str
    loss: str  # the loss label, or RANDOM_INIT
    seed: int
    metric: str  # dotted key of the evaluation result: "knn.top1"
    protocol: str  # one line naming the evaluation protocol
    eval_tasks: list[str]
    raw: dict  # the resolved config sections, placed in the cell's run folder
    run_dir: str
    study_dir: str
    record: str  # where the cell's record goes
    validation: bool = False  # a tuning trial: scored in validation mode (the test split unread)
    trial: dict | None = None  # a tuning trial: {journal, study, trial_id, pruner, ...} (mmcl.compare.search)
    tuned: dict | None = None  # a final cell of a tuned study: {trials, selected_trial, validation, options}
    task_definition: str = ""  # a hash of the task's config whatever the loss and seed (TaskEntry.definition)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        return cls(**json.loads(text))

    @property
    def log(self) -> Path:
        """The cell's log, beside its run folder (what its process prints)."""
        folder = Path(self.run_dir)
        return folder.parent / f"{folder.name}.log"

    @property
    def relative_run_dir(self) -> str:
        """The run folder relative to the study folder (portable: shards merge elsewhere)."""
        return Path(self.run_dir).relative_to(self.study_dir).as_posix()


#: The fields a record takes from its cell's spec.
IDENTITY = ("id", "definition", "task", "modality", "dataset", "loss", "seed", "metric", "protocol", "task_definition")


@dataclass
class CellRecord:
    """What one cell of a study left: its identity, outcome, training, scores and cost (``records/<cell>.json``)."""

    # identity (from the spec)
    id: str
    definition: str
    task: str
    modality: str
    dataset: str
    loss: str
    seed: int
    metric: str
    protocol: str
    task_definition: str = ""
    run_dir: str = ""
    loss_name: str | None = None
    loss_options: dict = field(default_factory=dict)
    # outcome
    status: str = "failed"  # "ok" or "failed"
    lost: bool = False  # failed because its worker died (killed, out of memory, node lost): the next run retries it
    error: str | None = None
    traceback: str | None = None
    # training
    steps: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0
    diagnostics: dict = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)
    # evaluation
    value: float | None = None  # the primary score (the task's metric)
    scores: dict[str, float] = field(default_factory=dict)  # every headline score, flat and dotted
    representation: dict[str, float] = field(default_factory=dict)  # alignment, uniformity, effective rank
    eval_seconds: float = 0.0
    # tuning: a trial's early stop (the pruner), a final cell's selection
    stopped_early: int | None = None
    tuned: dict | None = None
    folds: dict | None = None  # a graph trial's per-fold validation and test accuracies (nested cross-validation)
    # cost and provenance
    peak_memory_mb: float = 0.0
    seconds: float = 0.0
    versions: dict = field(default_factory=dict)
    finished: str = ""

    @classmethod
    def for_cell(cls, spec: CellSpec, **values: Any) -> CellRecord:
        """A record of ``spec``'s cell (its identity filled in) with ``values``."""
        loss = spec.raw.get("loss") or {}
        identity = {name: getattr(spec, name) for name in IDENTITY}
        options = {key: value for key, value in loss.items() if key != "name"}
        return cls(**identity, run_dir=spec.relative_run_dir, loss_name=loss.get("name"), loss_options=options,
                   tuned=spec.tuned, **values)  # fmt: skip

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def lookup(self, key: str) -> Any:
        """A value by name: a field (``value``, ``train_seconds``) or a dotted key of ``scores``, ``representation``
        or ``diagnostics`` (``representation.backbone.effective_rank``); None when the record has none."""
        if key in _FIELDS:
            return getattr(self, key)
        section, _, name = key.partition(".")
        values = getattr(self, section, None) if section in _FIELDS else None
        return values.get(name) if isinstance(values, dict) else None

    def to_dict(self, traceback: bool = True) -> dict:
        out = dataclasses.asdict(self)
        if not traceback:
            out.pop("traceback")
        return {key: value for key, value in out.items() if value is not None or key == "value"}

    def to_json(self, indent: int | None = 1, traceback: bool = True) -> str:
        return json.dumps(self.to_dict(traceback), indent=indent)

    @classmethod
    def from_dict(cls, values: dict, origin: str = "a record") -> CellRecord:
        if not isinstance(values, dict):
            raise ValueError(f"{origin}: a record is a JSON object, not a {type(values).__name__}")
        unknown = sorted(set(values) - _FIELDS)
        if unknown:
            raise ValueError(f"{origin}: unknown key(s) {unknown}; is it a record of a newer mmcl?")
        missing = sorted(_REQUIRED - set(values))
        if missing:
            raise ValueError(f"{origin}: missing key(s) {missing}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, origin: str = "a record") -> CellRecord:
        return cls.from_dict(json.loads(text), origin)


_FIELDS = frozenset(f.name for f in dataclasses.fields(CellRecord))
_REQUIRED = frozenset(f.name for f in dataclasses.fields(CellRecord) if f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING)  # fmt: skip


def record_path(output: Path, cell_id: str) -> Path:
    return Path(output) / "records" / f"{safe_name(cell_id)}.json"


def safe_name(cell_id: str) -> str:
    """A cell id as one file name (``digits/nt_xent/seed0`` -> ``digits__nt_xent__seed0``)."""
    return cell_id.replace("/", "__")


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be read: the report shows it as a gap of its cell; running the study refuses it."""

    where: str  # the file (and line of records.jsonl)
    cell: str  # the cell's id, as far as the file name tells
    error: str
    fix: str

    def message(self) -> str:
        return f"{self.where} is not a readable cell record ({self.error}); {self.fix}"


def scan_records(*folders: Path) -> tuple[dict[str, CellRecord], list[Unreadable]]:
    """Every cell record under the study folders, and those that could not be read. A folder's records are its
    ``records/*.json`` files, or, where it has no ``records/`` (a study's stored results), its ``records.jsonl``.
    The shards of one study merge by cell id; a cell run in two folders keeps its newest record."""
    records: dict[str, CellRecord] = {}
    unreadable: list[Unreadable] = []
    for folder in folders:
        for where, cell, read, fix in _record_sources(Path(folder)):
            try:
                record = CellRecord.from_json(read(), where)
            except (ValueError, TypeError) as error:  # bad JSON or UTF-8, a list, missing or unknown keys
                unreadable.append(Unreadable(where, cell, str(error).removeprefix(f"{where}: "), fix))
                continue
            if record.id not in records or record.finished >= records[record.id].finished:
                records[record.id] = record
    return records, unreadable


def _record_sources(folder: Path) -> list[tuple[str, str, Callable[[], str], str]]:
    """``(where, cell id, read its text, the fix when it is unreadable)`` of each record of a folder."""
    if (folder / "records").is_dir():
        return [(str(path), path.stem.replace("__", "/"), partial(path.read_text, encoding="utf-8"),
                 "delete it to re-run that cell") for path in sorted((folder / "records").glob("*.json"))]  # fmt: skip
    path = folder / "records.jsonl"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        return [(str(path), "?", partial(_raise, error), "restore it from its records/ folder or its history")]
    return [(f"{path} line {i}", "?", partial(str, line), "mend or delete that line")
            for i, line in enumerate(lines, 1) if line.strip()]  # fmt: skip


def _raise(error: Exception) -> str:
    raise error


def read_records(*folders: Path) -> dict[str, CellRecord]:
    """Every cell record under the study folders (:func:`scan_records`); an unreadable one is an error that names
    its file and the fix."""
    records, unreadable = scan_records(*folders)
    if unreadable:
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise ValueError(unreadable[0].message() + more)
    return records


def write_records_file(output: Path, *more: Path) -> Path:
    """``records.jsonl``: every readable record of ``output`` (and of the other folders), one per line, ordered by
    cell (an unreadable record stays where it is, for its owner to mend or delete)."""
    records, _ = scan_records(output, *more)
    path = Path(output) / "records.jsonl"
    lines = [record.to_json(indent=None, traceback=False) for _, record in sorted(records.items())]
    write_atomically(path, "".join(line + "\n" for line in lines))
    return path
