"""The ``mmcl`` commands of the README and docs run as written from any folder.

Every ``mmcl pretrain`` / ``mmcl evaluate`` command in a bash block must name a packaged config (or a run folder
that an earlier command of the same block created with ``train.run_name``), with no path into the repository,
and its config with its overrides must load and validate, from a folder outside the checkout. ``$DATA`` stands
for the data folder (this repository's ``../shared/data``), ``$MINILM`` for the offline model folder.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mmcl.cli import parse_args
from mmcl.compare.search import groups
from mmcl.compare.study import read_study
from mmcl.engine.config import load_config
from mmcl.engine.configs import packaged_config

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DATA = ROOT.parent / "shared" / "data"


def bash_blocks(path: Path) -> list[list[str]]:
    """Each bash block's commands, continuation lines joined and comments dropped."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        joined = block.replace("\\\n", " ")
        blocks.append(
            [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
        )
    return blocks


def mmcl_commands() -> list[tuple[str, int, list[str]]]:
    found = []
    for path in DOCUMENTS:
        for number, block in enumerate(bash_blocks(path)):
            for command in block:
                if command.startswith("mmcl "):
                    found.append((path.name, number, command))
    return found


COMMANDS = mmcl_commands()


def test_the_documents_hold_mmcl_commands():
    assert len(COMMANDS) >= 15 and {name for name, _, _ in COMMANDS} >= {"README.md", "graph.md", "text.md"}


@pytest.mark.parametrize("document,block,command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, _, c in COMMANDS])
def test_command_runs_from_any_folder(document, block, command, tmp_path, monkeypatch):
    assert "../" not in command and "configs/" not in command, "a documented command must not point into the repository"
    env = {"DATA": str(DATA), "MINILM": str(tmp_path / "minilm")}
    words = shlex.split(re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), command))
    assert "$" not in " ".join(words), f"unknown variable in {command!r}"
    subcommand, rest = words[1], words[2:]
    assert subcommand in ("pretrain", "evaluate", "quickstart", "losses", "configs", "compare", "plot"), subcommand
    args = parse_args(words[1:])  # the command line as mmcl reads it (a wrong one exits)
    if subcommand == "compare":
        return check_compare(rest, env)
    if subcommand not in ("pretrain", "evaluate") or not rest:
        return
    target, overrides = args.config if subcommand == "pretrain" else args.target, args.overrides
    monkeypatch.chdir(tmp_path)
    if target.startswith("runs/"):
        earlier = [c for d, b, c in COMMANDS if (d, b) == (document, block)]
        earlier = earlier[: earlier.index(command)]
        name = target.split("/")[1]
        assert any(f"train.run_name={name}" in c for c in earlier), f"{target} is not created earlier in its block"
        return
    assert packaged_config(target) is not None, f"{target!r} is not a packaged config (mmcl configs)"
    load_config(target, overrides)


def check_compare(words: list[str], env: dict[str, str]) -> None:
    """``mmcl compare STUDY --var NAME=VALUE ...``: the packaged study reads with those variables (a report of a
    folder needs the folder, which the documents create by running the study first)."""
    if "--report" in words or "--status" in words:  # a study folder, which the study's run creates
        return
    variables = dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--var")
    study = read_study(words[0], {**env, **variables})
    assert study.cells() or groups(study), "the study has nothing to run"  # a tuned loss's cells follow its search
