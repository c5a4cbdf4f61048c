"""The ``mmcl`` command line."""

from __future__ import annotations

import argparse
import sys


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcl", description="Multimodal contrastive representation learning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    loss_parser = commands.add_parser(
        "losses", help="list the contrastive losses: registry name, paper, required inputs",
        description="List the registered losses, or show one loss's options and defaults.",
    )  # fmt: skip
    loss_parser.add_argument("name", nargs="?", help="a loss name: show its options and defaults")
    loss_parser.set_defaults(run=_losses)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"mmcl: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
