"""The README documents what CI runs and every registered loss."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmcl import losses

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


def _python_blocks() -> list[tuple[str, str]]:
    """Every python block of the README with the heading it stands under."""
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", README, re.S):
        heading = re.findall(r"^#+ (.*)$", README[: match.start()], re.M)[-1]
        blocks.append((f"{len(blocks) + 1}: {heading}", match.group(1)))
    return blocks


BLOCKS = _python_blocks()


def test_the_readme_has_python_examples_of_the_api():
    assert len(BLOCKS) >= 5 and any("mmcl.pretrain(" in block for _, block in BLOCKS)


@pytest.mark.parametrize("block", [block for _, block in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_each_readme_python_block_runs_alone_outside_the_checkout(block, tmp_path):
    """A reader copies one block: it runs by itself in a fresh interpreter, from a folder outside the checkout."""
    script = block + "\nprint('README BLOCK OK')\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "README BLOCK OK" in result.stdout
