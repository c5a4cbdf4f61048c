"""The ``mmcl`` command line: ``pretrain``, ``evaluate``, ``quickstart``, ``losses``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _losses(args: argparse.Namespace) -> int:
    import losses

    if args.name:
        info = losses.info(args.name)
        print(f"{info.name}: {info.paper}\nneeds: {info.inputs}\noptions:")
        for option, default in losses.options(args.name).items():
            print(f"  {option} = {default!r}")
        return 0
    print(losses.format_table())
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from mmcl.config import load_config
    from mmcl.trainer import default_run_dir, pretrain

    target = Path(args.config)
    if target.is_dir():  # a run folder: its saved config, continued in place
        config = load_config(target / "config.yaml", args.overrides)
        run_dir = target
    else:
        config = load_config(target, args.overrides)
        run_dir = default_run_dir(config) if (args.resume or config.train.run_name) else None
        if args.resume and not config.train.run_name:
            raise ValueError("--resume with a config file needs train.run_name (or pass the run folder instead)")
    try:
        run_dir = pretrain(config, run_dir, resume=args.resume)
    except KeyboardInterrupt as stop:
        print(f"mmcl: {stop}", file=sys.stderr)
        return 130
    print(f"run folder: {run_dir}")
    if args.evaluate:
        return _evaluate(
            argparse.Namespace(target=str(run_dir), task=None, random_init=False, output=None, overrides=[])
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mmcl.evaluate import evaluate_run, format_results

    results = evaluate_run(args.target, args.task, args.random_init, args.output, args.overrides)
    print(format_results(results))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from mmcl.evaluate import quickstart

    quickstart(args.output_dir, args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcl", description="Multimodal contrastive representation learning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "pretrain",
        help="pretrain an encoder from a YAML config",
        description="Pretrain an encoder. Overrides look like loss.name=dhel train.epochs=5.",
    )
    p.add_argument("config", help="YAML config file, or a run folder (with --resume)")
    p.add_argument("overrides", nargs="*", help="dotted overrides section.key=value")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--evaluate", action="store_true", help="evaluate the final checkpoint afterwards")
    p.set_defaults(run=_pretrain)

    p = commands.add_parser(
        "evaluate",
        help="evaluate a run folder, a checkpoint, or a config's encoder as built (e.g. a published model)",
        description="Embed the evaluation splits with the frozen encoder and run the tasks.",
    )
    p.add_argument("target", help="run folder (best, else latest checkpoint), checkpoint file, or YAML config")
    p.add_argument("overrides", nargs="*", help="dotted overrides for a YAML config target")
    p.add_argument("--task", action="append", help="task to run (repeatable); default: the config's eval.tasks")
    p.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised encoder instead")
    p.add_argument("--output", help="JSON file for the results (default: RUN/eval.json; none for a config)")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("quickstart", help="pretrain and evaluate on the bundled digits images (about a minute)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mmcl: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
