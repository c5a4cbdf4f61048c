"""Running a study's tuning (:mod:`mmcl.compare.tune`): each (task, loss) gets its own Optuna search of
``tune.trials`` trials; each trial is a cell, run by the same runner (its own process and run folder, resumable),
scored in validation mode; the selected options then run as the study's ordinary cells.

A study folder holds, besides the cells' files::

    tune.journal      Optuna's JournalStorage (a file): every search, shared by the processes that join it
    trials.jsonl      one line per trial: task, loss, trial, options, value, state, split, seconds (and, for nested
                      cross-validation, the per-fold validation scores)
    trials/<task>/<loss>/trial<k>/   each trial's run folder; trials/records/: each trial's record

Re-running the study command continues each search where it stopped: a finished trial is never run again, a trial
whose process was killed resumes from its checkpoint (its options are in the journal), and a trial that fails
(diverges) is recorded as failed with its error and counts toward the budget. With ``--jobs 1`` a search is
reproducible trial for trial (a seeded sampler, trials in order); with more jobs, which trial ends first decides
what the sampler has seen when it proposes the next (as in any parallel Bayesian optimisation).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcl.compare.executor import Executor
from mmcl.compare.progress import Progress
from mmcl.compare.records import CellRecord, read_records, safe_name
from mmcl.compare.runner import after_cell, run_pool, write_spec
from mmcl.compare.study import Cell, LossEntry, Study, TaskEntry, with_options
from mmcl.compare.tune import Dimension, build_pruner
from mmcl.compare.tuning_report import TRIALS_FILE
from mmcl.runs import write_atomically

log = logging.getLogger("mmcl")

JOURNAL = "tune.journal"
TRIALS = "trials"


@dataclass(frozen=True)
class Group:
    """One search: a task and a tuned loss."""

    task: TaskEntry
    entry: LossEntry
    space: dict[str, Dimension]  # "loss.<option>" | "optim.<key>" -> dimension

    @property
    def name(self) -> str:
        return f"{self.task.name}/{self.entry.label}"


def groups(study: Study, shard: tuple[int, int] | None = None) -> list[Group]:
    """The searches of a study (of a shard: by the first cell's shard, so a search and its cells go together)."""
    out = []
    for task in study.tasks:
        for entry in study.losses:
            if study.tuned(entry):
                group = Group(task, entry, study.tune.space(entry.section["name"], entry.label))
                if shard is None or Cell(task.name, entry.label, study.seeds[0], {}).shard(shard[1]) == shard[0]:
                    out.append(group)
    return out


def trial_record_path(output: Path, trial_id: str) -> Path:
    return Path(output) / TRIALS / "records" / f"{safe_name(trial_id)}.json"


class Search:
    """One group's Optuna study in the journal: it hands out trial specs and takes their results."""

    def __init__(self, group: Group, study: Study, output: Path, threads: int) -> None:
        import optuna

        self.group, self.study, self.output, self.threads = group, study, output, threads
        train = group.task.config.train
        self.optuna = optuna.create_study(
            study_name=group.name, storage=journal_storage(Path(output) / JOURNAL), direction="maximize",
            load_if_exists=True, sampler=study.tune.sampler_for(group.space),
            pruner=build_pruner(study.tune.pruner, train.validate_every, train.max_steps),
        )  # fmt: skip
        self.distributions = {key: dim.distribution() for key, dim in group.space.items()}
        self.unfinished = [t for t in self.optuna.trials if t.state == optuna.trial.TrialState.RUNNING]
        self.specs: dict[str, Any] = {}  # spec file -> the Optuna trial it runs

    def next_spec(self) -> Path | None:
        """A spec: first the trials a killed run left unfinished, then new ones while the budget lasts."""
        while self.unfinished:
            trial = self.unfinished.pop(0)
            if self._told_from_record(trial):
                continue
            return self._spec(trial.number, trial._trial_id, trial.params)
        if len(self.optuna.trials) >= self.study.tune.trials:
            return None
        trial = self.optuna.ask(self.distributions)
        return self._spec(trial.number, trial._trial_id, trial.params)

    def finished(self, returncode: int, spec_file: Path, logfile: Path, seconds: float) -> None:
        trial_id = self.specs.pop(str(spec_file))
        self._tell(trial_id, after_cell(returncode, spec_file, logfile, seconds))

    def _told_from_record(self, trial: Any) -> bool:
        """A trial whose cell finished while nobody listened (the driver was killed): told from its record."""
        path = trial_record_path(self.output, f"{self.group.name}/trial{trial.number}")
        if not path.is_file():
            return False
        self._tell(trial._trial_id, CellRecord.from_json(path.read_text(), str(path)))
        return True

    def _tell(self, trial_id: int, record: CellRecord) -> None:
        import optuna

        number = next(t.number for t in self.optuna.trials if t._trial_id == trial_id)
        if record.ok and record.stopped_early is None and record.value is not None:
            self.optuna.tell(number, record.value)
        else:
            state = optuna.trial.TrialState.PRUNED if record.ok else optuna.trial.TrialState.FAIL
            self.optuna.tell(number, state=state)

    def _spec(self, number: int, trial_id: int, params: dict) -> Path:
        group, tune = self.group, self.study.tune
        cell = Cell(group.task.name, group.entry.label, tune.seed, self._trial_config(params))
        trial_id_text = f"{group.name}/trial{number}"
        folder = self.output.resolve() / TRIALS / group.task.name / group.entry.label / f"trial{number}"
        train = group.task.config.train
        spec = write_spec(
            self.study, cell, self.output, self.threads, id=trial_id_text, run_dir=str(folder),
            record=str(trial_record_path(self.output.resolve(), trial_id_text)), validation=True,
            protocol=_validation_protocol(group.task), eval_tasks=[group.task.metric.split(".")[0]],
            trial={"journal": str((self.output / JOURNAL).resolve()), "study": group.name, "trial_id": trial_id,
                   "number": number, "pruner": tune.pruner, "validate_every": train.validate_every,
                   "max_steps": train.max_steps},
        )  # fmt: skip
        self.specs[str(spec)] = trial_id
        return spec

    def _trial_config(self, params: dict) -> dict:
        """The task's config with the trial's options, the study's tune seed, and validation on the task's metric."""
        raw = json.loads(json.dumps(self.study.validated(self.group.task, self.group.task.raw)))
        raw["loss"] = dict(self.group.task.loss_section(self.group.entry))
        raw = with_options(raw, params)
        raw.setdefault("train", {})["seed"] = self.study.tune.seed
        raw.setdefault("eval", {}).update(seed=self.study.tune.seed, validation_metric=self.group.task.metric,
                                          validation_fraction=self.study.tune.validation_fraction)  # fmt: skip
        return raw

    def selection(self) -> dict | None:
        """The selected trial: the best validation score of the finished trials (the earliest among equals); under
        nested cross-validation (graph classification), also the best trial of each outer fold by that fold's own
        validation score (``per_fold``), which the final cells train at."""
        import optuna

        complete = [t for t in self.optuna.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            return None
        best = max(complete, key=lambda t: (t.value, -t.number))
        selected = {"options": dict(best.params), "selected_trial": best.number, "validation": best.value,
                    "trials": len(self.optuna.trials), "complete": len(complete)}  # fmt: skip
        per_fold = self._per_fold(complete)
        if not per_fold:
            return selected
        numbers = [fold["trial"] for fold in per_fold]  # the cell's own run: the trial most folds selected
        main = max(dict.fromkeys(numbers), key=lambda n: (numbers.count(n), n == best.number, -n))
        trial = next(t for t in complete if t.number == main)
        return {**selected, "options": dict(trial.params), "selected_trial": main, "validation": trial.value,
                "per_fold": per_fold}  # fmt: skip

    def _per_fold(self, complete: list) -> list[dict] | None:
        """For each outer fold, the trial with the best validation score on that fold's training part (the earliest
        among equals); None when the trials hold no per-fold scores. Outer test folds select nothing."""
        folds = {}
        for trial in complete:
            path = trial_record_path(self.output, f"{self.group.name}/trial{trial.number}")
            record = CellRecord.from_json(path.read_text(), str(path)) if path.is_file() else None
            if record is None or not record.folds:
                return None
            folds[trial.number] = (trial, record.folds["validation"])
        count = len(next(iter(folds.values()))[1])
        per_fold = []
        for k in range(count):
            trial, scores = max(folds.values(), key=lambda item: (item[1][k], -item[0].number))
            per_fold.append({"trial": trial.number, "options": dict(trial.params), "validation": scores[k]})
        return per_fold


def _validation_protocol(task: TaskEntry) -> str:
    from mmcl.tasks import get_task

    return f"validation: {get_task(task.metric.split('.')[0]).validation}"


def journal_storage(path: str | Path) -> Any:
    """Optuna's journal storage on a file (several processes and machines may share it; SQLite's parallel writes are
    known to break)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def run_search(study: Study, output: Path, executor: Executor, shard: tuple[int, int] | None = None,
               progress: Progress | None = None) -> dict[str, dict]:  # fmt: skip
    """Run every search of the study (or shard) to its budget through ``executor`` (as many trials at once as it
    runs cells); returns the selections by ``task/label`` (None for a search without a finished trial) and writes
    ``trials.jsonl``."""
    searches = [Search(group, study, output, executor.threads) for group in groups(study, shard)]
    owners: dict[str, Search] = {}

    def next_spec() -> Path | None:
        for search in sorted(searches, key=lambda s: len(s.optuna.trials)):  # the searches advance together
            spec = search.next_spec()
            if spec is not None:
                owners[str(spec)] = search
                return spec
        return None

    def finished(returncode: int, spec_file: Path, logfile: Path, seconds: float) -> None:
        owners.pop(str(spec_file)).finished(returncode, spec_file, logfile, seconds)

    log.info("tuning: %d search(es) of %d trial(s) each (%s sampler, %s pruner)", len(searches), study.tune.trials,
             study.tune.sampler, study.tune.pruner)  # fmt: skip
    run_pool(next_spec, finished, executor, progress)
    write_trials_file(output, searches)
    selections = {search.group.name: search.selection() for search in searches}
    for name in (name for name, chosen in selections.items() if chosen is None):
        log.warning(
            "warning: %s: no trial of its search finished (see %s), so its cells cannot run: move its search space "
            "(tune.space) and run the study into another --output", name, Path(output) / TRIALS_FILE,
        )  # fmt: skip
    return selections


def write_trials_file(output: Path, searches: list[Search]) -> Path:
    """``trials.jsonl``: one object per trial of every search (the records add seconds and the split)."""
    records = read_records(Path(output) / TRIALS)
    lines = []
    for search in searches:
        for trial in search.optuna.trials:
            trial_id = f"{search.group.name}/trial{trial.number}"
            record = records.get(trial_id)
            lines.append(json.dumps({
                "task": search.group.task.name, "loss": search.group.entry.label, "trial": trial.number,
                "options": trial.params, "value": trial.value, "state": trial.state.name.lower(),
                "split": record.protocol if record else _validation_protocol(search.group.task),
                "seconds": record.seconds if record else None,
                "stopped_early": record.stopped_early if record else None,
                "steps": record.steps if record else None,
                "error": record.error if record and not record.ok else None,
                "intermediate": {str(step): value for step, value in trial.intermediate_values.items()},
            }))  # fmt: skip
    path = Path(output) / TRIALS_FILE
    write_atomically(path, "".join(line + "\n" for line in lines))
    return path


def format_search_plan(study: Study, output: Path, shard: tuple[int, int] | None = None) -> str:
    """``--dry-run``'s tuning lines: per search, its trials done of the budget and its space; the final cells follow
    the searches (they are not counted above, their options unknown yet)."""
    tune = study.tune
    done = _trials_done(output)
    lines = [
        f"tuning: {tune.trials} trial(s) per (task, loss), {tune.sampler} sampler (seed {tune.seed}), {tune.pruner} "
        f"pruner, validation hold-out {tune.validation_fraction:g} where a task needs one"
    ]
    for group in groups(study, shard):
        space = ", ".join(f"{key} {dim.describe()}" for key, dim in group.space.items()) or "nothing to tune"
        pruned = (
            ""
            if tune.pruner == "none" or group.task.config.train.validate_every
            else " (never pruned: no validate_every)"
        )
        lines.append(f"  {group.name:32} {done.get(group.name, 0):>3}/{tune.trials} trials{pruned}; {space}")
    cells = len(groups(study, shard)) * len(study.seeds)
    lines.append(
        f"then {cells} cell(s) at the selected options ({len(study.seeds)} seed(s) each), test split read once"
    )
    return "\n".join(lines)


def _trials_done(output: Path) -> dict[str, int]:
    """Trials asked so far per search, from the journal (without creating one)."""
    if not (Path(output) / JOURNAL).is_file():
        return {}
    import optuna

    storage = journal_storage(Path(output) / JOURNAL)
    return {summary.study_name: summary.n_trials for summary in optuna.get_all_study_summaries(storage)}
