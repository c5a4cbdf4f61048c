"""The README documents what CI runs and every registered loss."""

import re
from pathlib import Path

import losses

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bash_block(section: str) -> list[str]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    for section in ("Install", "Tests"):
        for command in _bash_block(section):
            # CI may add --quiet; the command itself must be the README's.
            assert command.replace("pip install", "pip install --quiet") in ci or command in ci, (section, command)


def test_readme_table_lists_every_loss_with_its_inputs():
    for name in losses.available():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, f"README loss table lacks {name}"
        assert losses.info(name).inputs in row, (name, row)
