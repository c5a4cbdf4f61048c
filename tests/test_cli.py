import json
import subprocess
import sys
from pathlib import Path

from mmcl import losses

ROOT = Path(__file__).resolve().parent.parent


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
    lines = result.stdout.splitlines()
    for option, description in losses.describe_options("hcl").items():  # each option, then what it means
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {option} = "))
        assert lines[at + 1].startswith("      ") and lines[at + 1].split()[:3] == description.split()[:3], option
    result = run("losses", "nt-xent")
    assert result.returncode == 2 and "unknown loss 'nt-xent'" in result.stderr and "nt_xent" in result.stderr


def test_mmcl_help():
    result = run("--help")
    assert result.returncode == 0 and "losses" in result.stdout


def test_mmcl_version_names_mmcl_and_torch_without_importing_torch():
    import mmcl

    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"mmcl {mmcl.__version__} (torch "), result.stdout
    code = "import sys\nfrom mmcl.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
    code += "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    imports = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in imports.stdout, imports.stdout[-500:]


def test_a_reader_that_stops_early_is_no_error():
    # `true` reads nothing and has exited before mmcl writes: its output meets a closed pipe
    result = subprocess.run(f"{sys.executable} -m mmcl compare --example | true", shell=True, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.stderr == "", result.stderr


def test_each_command_has_help():
    for command in ("pretrain", "evaluate", "quickstart", "losses"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: mmcl " + command in result.stdout, result.stderr


def test_overrides_may_follow_the_flags_and_anything_else_is_refused():
    from mmcl.cli import parse_args

    args = parse_args(["pretrain", "run", "a.b=1", "--resume", "train.max_steps=8", "--evaluate", "c.d=2"])
    assert args.resume and args.evaluate and args.overrides == ["a.b=1", "train.max_steps=8", "c.d=2"]
    for stray in (["pretrain", "run", "--resume", "--bogus"], ["pretrain", "run", "--resume", "extra"],
                  ["losses", "hcl", "a.b=1"]):  # fmt: skip
        result = run(*stray)
        assert result.returncode == 2 and "mmcl: error: unrecognized arguments: " + stray[-1] in result.stderr


def test_pretrain_config_errors_exit_2_with_the_message(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {backbone: small_cnn}\n")
    result = run("pretrain", str(config), "train.epochs=many")
    assert result.returncode == 2 and "train.epochs='many' must be of type int" in result.stderr
    result = run("evaluate", str(tmp_path / "no_such_run"))
    assert result.returncode == 2 and "no_such_run" in result.stderr


def test_pretrain_then_evaluate_from_the_command_line(tmp_path):
    result = run(
        "pretrain",
        "quickstart",
        f"train.output_dir={tmp_path}",
        "train.run_name=cli",
        "train.max_steps=3",
        "optim.warmup_steps=0",
        "train.progress_bar=false",
        "data.train_subset=300",
        "data.test_subset=100",
        "eval.tasks=[knn]",
        "--evaluate",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"run folder: {tmp_path / 'cli'}" in result.stdout and "knn top1" in result.stdout
    assert (tmp_path / "cli" / "eval.json").exists() and (
        tmp_path / "cli" / "checkpoints" / "step_00000003.pt"
    ).exists()
    resumed = run("pretrain", str(tmp_path / "cli"), "--resume", "train.max_steps=4")  # overrides after the flag
    assert resumed.returncode == 0 and "at step 3" in resumed.stderr, resumed.stderr[-2000:]
    # a config file is evaluated as built, with overrides; overrides on a run folder are refused
    as_built = run(
        "evaluate",
        "quickstart",
        "data.train_subset=300",
        "data.test_subset=100",
        "eval.tasks=[knn]",
        f"train.output_dir={tmp_path / 'evaluations'}",
        "--output",
        str(tmp_path / "as_built.json"),
    )
    assert as_built.returncode == 0 and "as_built" in as_built.stdout, as_built.stderr[-2000:]
    results = json.loads((tmp_path / "as_built.json").read_text())
    assert results["checkpoint"] is None
    (folder,) = (tmp_path / "evaluations").iterdir()  # the results of a config are kept too, in their own folder
    assert f"results   {folder / 'eval.json'}" in as_built.stdout
    assert json.loads((folder / "eval.json").read_text())["as_built"]["knn"]["top1"] == results["knn"]["top1"]
    refused = run("evaluate", str(tmp_path / "cli"), "eval.tasks=[knn]")
    assert refused.returncode == 2 and "apply to a config only" in refused.stderr


def test_a_short_quickstart_needs_one_override(tmp_path):
    """The quickstart's warm-up is a ratio of the run, so ``train.max_steps=10`` alone is a valid quick try."""
    command = ["quickstart", "train.max_steps=10", "data.train_subset=300", "data.test_subset=100"]
    result = subprocess.run([sys.executable, "-m", "mmcl", *command], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "knn top-1 (%)" in result.stdout and "linear top-1 (%)" in result.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["sessions"][-1]["warmup_steps"] == 1


def test_a_target_that_names_nothing_says_what_could_have_been_meant(tmp_path):
    (tmp_path / "runs" / "mutag-dhel").mkdir(parents=True)

    def refused(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "mmcl", *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2 and not (tmp_path / "runs" / "no-such-run").exists(), result.stderr
        return result.stderr

    message = refused("evaluate", "runs/no-such-run")
    assert "no run folder, checkpoint, config file or packaged config is named 'runs/no-such-run'" in message
    assert "`mmcl configs` lists them" in message and "similar" not in message
    assert "(similar: runs/mutag-dhel)" in refused("evaluate", "runs/mutag-dhl")
    assert "(similar: graph/mutag" in refused("pretrain", "graph/mutg")
    assert "'cpu-small' is a packaged study, not a config: run it with `mmcl compare cpu-small`" in refused(
        "pretrain", "cpu-small"
    )


def on_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``args`` with stdin, stdout and stderr on a pseudo-terminal of 120 x 40 (tqdm draws nothing on a terminal
    of width 0); returns the exit status and everything written."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, cwd=cwd)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_evaluation_shows_each_tasks_progress_on_a_terminal_only(tmp_path):
    evaluate = [sys.executable, "-m", "mmcl", "evaluate", "quickstart", "data.train_subset=300", "data.test_subset=100",
                "eval.tasks=[knn,linear,metrics]", "eval.linear.method=torch", "eval.linear.epochs=3",
                "eval.batch_size=64", "eval.metrics.pairs=128", f"train.output_dir={tmp_path}"]  # fmt: skip
    status, shown = on_terminal(evaluate, tmp_path)
    assert status == 0, shown[-2000:]
    for bar in ("knn: embed split train", "knn: embed split test", "linear: epochs", "| 0/3 ",
                "metrics: embed two views"):  # fmt: skip
        assert bar in shown, (bar, shown[-3000:])
    status, quiet = on_terminal([*evaluate, "train.progress_bar=false"], tmp_path)
    assert status == 0 and "knn top1" in quiet and "embed split" not in quiet and "it/s" not in quiet, quiet[-2000:]
    piped = subprocess.run(evaluate, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert piped.returncode == 0 and "knn top1" in piped.stdout
    assert "embed split" not in piped.stderr and "it/s" not in piped.stderr, piped.stderr[-2000:]
