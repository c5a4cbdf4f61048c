"""The ``mmcl`` command line, a thin layer over the Python API (:mod:`mmcl.engine.api`).

Commands: ``pretrain``, ``evaluate``, ``quickstart``, ``losses``, ``configs``. Nothing heavy is imported
before a command runs, so ``mmcl --help`` starts without importing torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from mmcl.logs import configure_logging


def _losses(args: argparse.Namespace) -> int:
    from mmcl import losses

    if args.name:
        print(losses.format_options(args.name))
        print(_search_space(losses.info(args.name)))
        return 0
    print(losses.format_table())
    return 0


def _search_space(info) -> str:
    """The loss's default search space for a study's tuning (``tune:``), one option a line."""
    from mmcl.compare.tune import parse_dimension

    lines = [f"  {option}: {parse_dimension(value, option).describe()}" for option, value in info.search_space.items()]
    return "search space (mmcl compare's tune:):\n" + ("\n".join(lines) or "  nothing to tune")


def _configs(args: argparse.Namespace) -> int:
    from mmcl.engine.configs import format_configs, packaged_config, packaged_study

    if args.name:
        path = packaged_config(args.name) or packaged_study(args.name)
        if path is None:
            raise ValueError(f"no packaged config or study {args.name!r}; `mmcl configs` lists them")
        print(path.read_text(), end="")
        return 0
    print(format_configs())
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from mmcl.engine.api import pretrain

    try:
        run = pretrain(
            args.config, args.overrides, resume=args.resume, allow_world_size_change=args.allow_world_size_change,
            plugins=args.plugin,
        )  # fmt: skip
    except KeyboardInterrupt as stop:
        print(f"mmcl: {str(stop) or 'stopped by signal before training started; nothing was trained: run it again'}",
              file=sys.stderr)  # fmt: skip
        return 130
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under several processes the first reports (and evaluates) the run
        return 0
    print(f"run folder: {run.folder}")
    if args.evaluate:
        return _evaluate(
            argparse.Namespace(
                target=str(run.folder), task=None, random_init=False, output=None, overrides=[], plugin=[]
            )
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mmcl.engine.api import evaluate
    from mmcl.engine.evaluate import format_results

    results = evaluate(
        args.target, args.task, overrides=args.overrides, random_init=args.random_init, output=args.output,
        plugins=args.plugin,
    )  # fmt: skip
    print(format_results(results))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmcl.engine.configs import packaged_study
    from mmcl.engine.plugins import load_plugins

    if args.example:
        print(packaged_study("example").read_text(), end="")
        return 0
    load_plugins(args.plugin)
    if args.report:
        return _compare_report(args)
    if args.status:
        from mmcl.compare.progress import format_status

        if not args.study or not Path(args.study).is_dir():
            raise FileNotFoundError(f"--status {args.study}: no such study folder (give the --output of a study run)")
        print(format_status(Path(args.study)))
        return 0
    if not args.study:
        raise ValueError("mmcl compare needs a study (a YAML file or a packaged study name) or --report DIR")
    if args.definition:
        raise ValueError(f"--study {args.definition} is for --report (a run reads its study from STUDY)")
    if args.more:
        raise ValueError(f"unrecognized argument(s) {args.more}: more study folders go with --report only")
    from mmcl.compare.executor import build_executor, choose_executor
    from mmcl.compare.report import build_report
    from mmcl.compare.runner import run_study
    from mmcl.compare.study import read_study

    variables = dict(_assignment(item, "--var") for item in args.var)
    study = read_study(args.study, variables)
    output = Path(args.output or f"runs/study-{study.name}")
    shard = _shard(args.shard) if args.shard else None
    choice = choose_executor(study.executor, args.executor, args.executor_option)
    if args.dry_run:
        return _dry_run(args, study, output, shard, build_executor(choice, output, args.jobs, study.resources))
    failed = len(
        run_study(study, output, args.jobs, shard, args.retry_failed, choice).failed
    )  # this run's (or shard's)
    report = build_report([output], plots=not args.no_plots)
    print(
        f"study folder: {output}\nreport: {report}" + (f"\n{failed} cell(s) failed: see the report" if failed else "")
    )
    return 0


def _compare_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmcl.compare.report import build_report

    folders = [Path(folder) for folder in [args.study, *args.more] if folder]
    if not folders:
        raise ValueError("mmcl compare --report needs the study folder(s) to report: mmcl compare --report DIR")
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"--report {folder}: no such study folder (give the --output of a study run)")
    output = Path(args.output) if args.output else None
    print(f"report: {build_report(folders, output, plots=not args.no_plots, study=args.definition)}")
    return 0


def _dry_run(args: argparse.Namespace, study, output, shard, executor) -> int:
    from pathlib import Path

    from mmcl.compare.plan import estimate, format_estimate, plan

    for folder in args.estimate_from:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--estimate-from {folder}: no such study folder (a finished study's --output)")
    work = plan(study, output, shard, args.retry_failed)
    rows = estimate(study, work, output, [Path(f) for f in args.estimate_from], calibrate=args.calibrate)
    print(format_estimate(rows, work, executor.parallelism))
    if study.tune is not None:
        from mmcl.compare.search import format_search_plan

        print(f"\n{format_search_plan(study, output, shard)}")
    return 0


def _assignment(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"{flag} {text!r} must look like NAME=VALUE")
    name, value = text.split("=", 1)
    return name, value


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like I/N (e.g. 2/4)") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmcl.compare.figures import plot_runs

    paths = plot_runs([Path(run) for run in args.runs], Path(args.output) if args.output else None, args.name)
    print("\n".join(str(path) for path in paths))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from mmcl.engine.api import quickstart

    quickstart(args.output_dir, args.overrides)
    return 0


def _version() -> str:
    """``mmcl 0.2.0 (torch 2.13.0+cpu, Python 3.12.3)``: read from the installed packages' metadata, so that
    ``mmcl --version`` imports no torch."""
    import platform
    from importlib import metadata

    from mmcl import __version__

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"mmcl {__version__} (torch {torch}, Python {platform.python_version()})"


class _Version(argparse.Action):
    """``--version``: the versions looked up only when asked (every other command starts without the lookup)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_) -> None:
        print(_version())  # to standard output, as argparse's own version action
        parser.exit()


STUDY_FILE_HELP = """\
a study file (YAML) has the keys:
  name          the study's name; its folder is runs/study-<name>
  seeds         a list of seeds; at a seed every loss starts from the same weights, data order and views
  losses        registered losses (mmcl losses): a name, or {name, <its options>, label}
  tasks         each {name, config (packaged or a file), overrides, metric, loss_options}; the budget is the task's
  description   optional: the report's first line
  variables     optional: {NAME: what it is}; ${NAME} is filled from --var NAME=VALUE or the environment
  baseline      optional: a loss label; the report tests each loss's paired difference to it
  random_init   optional: true adds an untrained encoder per task and seed
  reference     optional: the row whose score is 0 in the normalised aggregates (default: random_init, if any)
  claims        optional: verdicts (kind: better, at_least with a margin, smaller_drop or bound)
  tune          optional: {trials, sampler, seed, pruner, validation_fraction, space, optim}: every loss tuned alike
  executor      optional: {name: local | ray | slurm, <its options>}: where the cells run (--executor wins)
  resources     optional: {cpus, gpus}: what each cell asks of the executor (docs/cluster.md)
`mmcl compare --example > study.yaml` writes a commented study; `mmcl configs` lists the packaged ones."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcl", description="Multimodal contrastive representation learning.")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also: environment variable MMCL_DEBUG=1)"
    )
    parser.add_argument("--version", action=_Version, help="print mmcl's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or .py file that registers your own components (repeatable)",
    )

    p = commands.add_parser(
        "pretrain",
        parents=[plugin],
        help="pretrain an encoder from a config (a YAML file or a packaged config name)",
        description="Pretrain an encoder. Overrides look like loss.name=dhel train.epochs=5.",
    )
    p.add_argument("config", help="YAML config file, packaged config name (see `mmcl configs`), or a run folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides section.key=value")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument(
        "--allow-world-size-change",
        action="store_true",
        help="with --resume: accept another number of processes than the run was trained with",
    )
    p.add_argument("--evaluate", action="store_true", help="evaluate the final checkpoint afterwards")
    p.set_defaults(run=_pretrain)

    p = commands.add_parser(
        "evaluate",
        parents=[plugin],
        help="evaluate a run folder, a checkpoint, or a config's encoder as built (e.g. a published model)",
        description="Embed the evaluation splits with the frozen encoder and run the tasks.",
    )
    p.add_argument("target", help="run folder (best, else latest checkpoint), checkpoint file, or config")
    p.add_argument("overrides", nargs="*", help="dotted overrides for a config target")
    p.add_argument("--task", action="append", help="task to run (repeatable); default: the config's eval.tasks")
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised encoder instead")
    p.add_argument("--output", help="also write these results to this JSON file (every result is kept in eval.json)")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("quickstart", help="pretrain and evaluate on the bundled digits images (about 20 s)")
    p.add_argument("--output-dir", default="runs", help="where the run folder goes")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.name=dhel")
    p.set_defaults(run=_quickstart)

    p = commands.add_parser(
        "losses",
        help="list the contrastive losses: registry name, paper, required inputs",
        description="List the registered losses, or show one loss's options and defaults.",
    )
    p.add_argument("name", nargs="?", help="a loss name: show its options and defaults")
    p.set_defaults(run=_losses)

    p = commands.add_parser(
        "compare",
        parents=[plugin],
        help="compare losses across tasks and modalities in a study, with statistics and figures",
        description="Run every (task, loss, seed) cell of a study (resumable), then write report.md, report.csv and "
        "plots/ into the study folder. With --report, rebuild them from the records of one or several folders.",
        epilog=STUDY_FILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", nargs="?", help="a study YAML file or a packaged study name (mmcl configs lists them)")
    p.add_argument("more", nargs="*", help="with --report: more study folders (shards) to merge")
    p.add_argument("--output", help="the study folder (default runs/study-<name>); with --report, the report's")
    p.add_argument(
        "--jobs",
        type=int,
        help="cells at once (default: local 1, or one per GPU; ray: the local "
        "instance's CPUs; slurm: the job array's parallelism); threads split between them",
    )
    p.add_argument(
        "--executor",
        help="where the cells run: local (default: processes on this machine), ray (a Ray "
        "cluster or a local instance) or slurm (a submitit job array); also the study's executor: section",
    )
    p.add_argument(
        "--executor-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the executor, e.g. address=HOST:PORT, partition=gpu (repeatable)",
    )
    p.add_argument("--status", action="store_true", help="print how far the study run in the folder STUDY is")
    p.add_argument(
        "--estimate-from",
        action="append",
        default=[],
        metavar="DIR",
        help="with --dry-run: seconds per cell from the finished cells of these study folders",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="with --dry-run: time one short calibration cell of each task that has no estimate",
    )
    p.add_argument("--shard", help="I/N: run only this machine's share of the cells (a cluster's job array)")
    p.add_argument("--dry-run", action="store_true", help="list the cells to run and estimate their cost")
    p.add_argument("--retry-failed", action="store_true", help="run the cells that failed before again")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a study variable (${NAME})")
    p.add_argument("--report", action="store_true", help="only rebuild the report from the records (STUDY is a folder)")
    p.add_argument("--study", dest="definition", metavar="STUDY",
                   help="with --report: the study file or packaged name the records were run with, for folders "
                   "without study.yaml (stored results: benchmarks/results/study-*)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--example", action="store_true", help="print a commented study file (every key) and exit")
    p.set_defaults(run=_compare)

    p = commands.add_parser(
        "plot",
        help="draw the training curves (and scores) of one or several runs to PNG and SVG",
        description="Loss, positive and negative cosine, effective temperature, learning rate, monitored losses, and "
        "each run's evaluation scores beside its random-init baseline (eval.json).",
    )
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument(
        "--output", help="folder for the figures (default: RUN/plots for one run, else plots/ beside the runs)"
    )
    p.add_argument("--name", default="runs", help="file name of the figures (NAME.png, NAME.svg)")
    p.set_defaults(run=_plot)

    p = commands.add_parser(
        "configs",
        help="list the packaged configs with their descriptions, or print one",
        description="Packaged configs are named without a path, e.g. `mmcl pretrain graph/mutag data.root=...`.",
    )
    p.add_argument("name", nargs="?", help="a packaged config or study, named as listed: print it")
    p.set_defaults(run=_configs)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with overrides also after the flags (``mmcl pretrain RUN --resume train.max_steps=8``):
    argparse stops filling a ``nargs="*"`` positional at the first flag, so the ones after it come back unknown."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in unknown)):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader stopped early (`mmcl configs | head`): not an error of mmcl's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting flushes nothing more
        return 0
    except (ValueError, OSError) as error:  # what a user can cause: config, data, paths, disk, checkpoints, shapes
        if args.debug or os.environ.get("MMCL_DEBUG"):
            raise
        message = str(error).replace("\n", "\n  ")
        print(f"mmcl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
