"""How a study's cells run: one small interface (submit cells, learn which ended, cancel the rest), implemented by
the executors of :mod:`mmcl.compare.executors` and found by name in :data:`EXECUTORS`, as losses and tasks are: a
new executor is one file with a :class:`Executor` subclass under ``@register_executor("name")``.

An executor runs a cell's spec file (written by :func:`mmcl.compare.runner.write_spec`) somewhere: this machine's
worker processes (``local``), a Ray cluster's tasks (``ray``) or a Slurm job array (``slurm``). The cell writes
its own record into the study folder, so an executor only says when a cell ended and how its worker ended
(:class:`Ended`); the pool (:func:`mmcl.compare.runner.run_pool`) records a cell whose worker died before it wrote
one. Every executor is built and started (:meth:`Executor.start`: options checked, extras imported, a cluster
reached) before the study folder is written, so a bad option ends in one line before any cell is lost.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mmcl.contract.registry import Registry

#: The executors by name; the built-in ones register on the first lookup.
EXECUTORS: Registry[type[Executor]] = Registry("executor", builtin=("mmcl.compare.executors",), config_key="--executor")
register_executor = EXECUTORS.register


@dataclass(frozen=True)
class Resources:
    """What one cell asks for (a study's ``resources:`` section): CPU cores (its torch threads) and GPUs."""

    cpus: int | None = None  # None: the executor's default (local: the cores split between the cells at once)
    gpus: float | None = None  # None: local gives each cell one GPU when the machine has GPUs; ray and slurm none


@dataclass(frozen=True)
class Ended:
    """A cell whose worker is done with it: its exit status (0 ok, 1 its record says failed, else the worker's)
    and how the worker ended, which the pool records when the cell left no record."""

    spec_file: Path
    returncode: int
    reason: str  # "exited with 0", "the Ray task's worker died: ...", "Slurm job 12_3 ended in state TIMEOUT"


@dataclass(frozen=True)
class Option:
    """An executor option (``--executor-option KEY=VALUE`` or the study's ``executor:`` section)."""

    parse: Callable[[str], Any]  # from the command line's text; a study's YAML value is parsed from its text too
    help: str


def flag(text: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0) as a bool."""
    value = str(text).strip().lower()
    if value not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError("must be true or false")
    return value in ("true", "yes", "1")


def count(text: str) -> int:
    """A whole number >= 0."""
    value = int(str(text).strip())
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def positive(text: str) -> float:
    """A number > 0."""
    value = float(str(text).strip())
    if not value > 0:
        raise ValueError("must be above 0")
    return value


class Executor(ABC):
    """Runs cells: :meth:`submit` spec files, :meth:`wait` for those that ended, :meth:`cancel` the rest.

    Args:
        output: the study folder (an executor keeps its own files under it, e.g. ``slurm/``).
        jobs: ``--jobs``: cells at once (None: the executor's default).
        resources: what each cell asks for.
        options: the executor's options, parsed (:func:`parse_options`).
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    #: whether the engine queues and throttles cells itself (a Ray cluster, a Slurm job array): a study's cells,
    #: known up front, are then handed over at once; a search's trials still go at most ``parallelism`` at a time
    queues: ClassVar[bool] = False

    def __init__(self, output: Path, jobs: int | None, resources: Resources, options: dict[str, Any]) -> None:
        if jobs is not None and jobs < 1:
            raise ValueError(f"--jobs {jobs}: run at least one cell at a time (--jobs 1 up to the number of cores)")
        self.output, self.jobs, self.resources, self.settings = Path(output), jobs, resources, options

    @property
    @abstractmethod
    def parallelism(self) -> int:
        """How many cells run at once (what the ETA divides by)."""

    @property
    def threads(self) -> int:
        """torch's threads in each cell (``train.threads``): the cores a cell has."""
        return self.resources.cpus or max(1, (os.cpu_count() or 1) // self.parallelism)

    def describe(self) -> str:
        """One line for the log: the executor and where its cells run."""
        return f"{self.name} executor, {self.parallelism} cell(s) at once"

    def start(self) -> None:  # noqa: B027 (optional: most executors connect here)
        """Import the engine and reach it (a cluster's address); errors are ``ValueError``/``OSError`` lines."""

    @abstractmethod
    def capacity(self) -> int:
        """How many more cells it starts now."""

    @abstractmethod
    def submit(self, spec_files: list[Path]) -> None:
        """Start these cells (a Slurm executor submits them as one job array)."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Ended]:
        """The cells that ended since the last call, waiting up to ``timeout`` seconds for one."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop every cell it runs (the driver was interrupted); their folders resume next time."""

    def close(self) -> None:  # noqa: B027 (optional: executors that hold a connection or workers close them)
        """Release what :meth:`start` took (worker processes, a local Ray instance)."""


@dataclass(frozen=True)
class ExecutorChoice:
    """Which executor a run uses and its options: the command line's, else the study file's ``executor:``."""

    name: str = "local"
    options: dict[str, Any] = field(default_factory=dict)


def choose_executor(study_section: dict | None, name: str | None, cli_options: list[str]) -> ExecutorChoice:
    """The executor of a run: ``--executor`` (else the study's ``executor.name``, else ``local``) with the study's
    options for it (when it names the same executor), then ``--executor-option KEY=VALUE`` over them."""
    section = dict(study_section or {})
    chosen = name or section.get("name") or "local"
    same = section.get("name", chosen) == chosen  # the study's options are another executor's otherwise
    options = {key: value for key, value in section.items() if key != "name"} if same else {}
    for item in cli_options:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--executor-option {item!r} must look like KEY=VALUE (e.g. address=10.0.0.1:6379)")
        options[key.strip()] = value
    return ExecutorChoice(chosen, options)


def parse_options(kind: type[Executor], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` options checked against the executor's: a ``ValueError`` naming the key, the value and the fix."""
    parsed = {}
    for key, value in given.items():
        if key not in kind.options:
            valid = ", ".join(f"{name} ({option.help})" for name, option in kind.options.items()) or "none"
            raise ValueError(f"--executor-option {key}={value}: the {kind.name} executor has no option {key!r}; "
                             f"its options: {valid}")  # fmt: skip
        try:
            parsed[key] = kind.options[key].parse(str(value).lower() if isinstance(value, bool) else str(value))
        except ValueError as error:
            raise ValueError(f"--executor-option {key}={value}: {error} ({kind.options[key].help})") from None
    return parsed


def build_executor(choice: ExecutorChoice, output: Path, jobs: int | None, resources: Resources) -> Executor:
    """The chosen executor, its options checked (not started)."""
    kind = EXECUTORS.get(choice.name)
    return kind(output, jobs, resources, parse_options(kind, choice.options))


def require(module: str, extra: str, executor: str) -> Any:
    """Import an executor's engine, or a ``ValueError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"--executor {executor} needs {module}, which is not installed here ({error}); "
                         f"install it with: pip install 'mmcl[{extra}]'") from None  # fmt: skip


def read_resources(raw: Any) -> Resources:
    """A study's ``resources: {cpus: 2, gpus: 1}``, checked."""
    if raw is None:
        return Resources()
    if not isinstance(raw, dict) or set(raw) - {"cpus", "gpus"}:
        raise ValueError(
            f"resources={raw!r} must be a mapping with cpus and/or gpus (per cell), e.g. {{cpus: 2, gpus: 1}}"
        )
    cpus, gpus = raw.get("cpus"), raw.get("gpus")
    if cpus is not None and (not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1):
        raise ValueError(f"resources.cpus={cpus!r} must be a whole number >= 1 (the cores of one cell)")
    if gpus is not None and (not isinstance(gpus, (int, float)) or isinstance(gpus, bool) or gpus < 0):
        raise ValueError(f"resources.gpus={gpus!r} must be a number >= 0 (the GPUs of one cell; 0.5 shares one)")
    return Resources(cpus, gpus)


def read_executor_section(raw: Any) -> dict | None:
    """A study's ``executor: {name: slurm, partition: gpu, ...}``: its name checked against the registry (the
    options are checked when the run builds it, against the executor the command line chooses)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("name", "local"), str):
        raise ValueError(f"executor={raw!r} must be a mapping with a name ({', '.join(EXECUTORS.names())}) and its "
                         "options, e.g. {name: slurm, partition: gpu, time: 120}")  # fmt: skip
    name = raw.get("name", "local")
    parse_options(EXECUTORS.get(name), {k: v for k, v in raw.items() if k != "name"})
    return dict(raw)
