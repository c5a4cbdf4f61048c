import subprocess
import sys

import losses


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcl", *args], capture_output=True, text=True, timeout=120)


def test_mmcl_losses_prints_every_name_paper_and_inputs():
    result = run("losses")
    assert result.returncode == 0, result.stderr
    for name in losses.available():
        info = losses.info(name)
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert info.paper in line and info.inputs in line


def test_mmcl_losses_name_shows_options_and_unknown_name_fails_clearly():
    result = run("losses", "hcl")
    assert result.returncode == 0 and "beta = 1.0" in result.stdout and "tau_plus = 0.1" in result.stdout
    result = run("losses", "nt-xent")
    assert result.returncode == 2 and "unknown loss 'nt-xent'" in result.stderr and "nt_xent" in result.stderr


def test_mmcl_help():
    result = run("--help")
    assert result.returncode == 0 and "losses" in result.stdout
