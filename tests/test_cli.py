"""The installed ``barrierlab`` command: its help lists every command without loading torch, an unknown command is
one line, a stage run through it is the ``python -m`` run, and the sweep commands pick their experiment's config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import sweep
from experiments.cli import COMMANDS, main, sweep_args
from tests.conftest import ROOT, TINY, metrics, one_line_error

BARRIERLAB = Path(sys.executable).parent / "barrierlab"  # the [project.scripts] entry point of the editable install


def barrierlab(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``barrierlab args`` from the repository root, as a user would (run by this interpreter, with its flags)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *python_flags, str(BARRIERLAB), *args], cwd=ROOT, capture_output=True,
                          text=True, env=env)


def test_help_lists_every_command_without_importing_torch():
    assert BARRIERLAB.exists(), "install the project (.venv/bin/pip install -e .) to get the barrierlab command"
    proc = barrierlab("--help", python_flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS) == ["pretrain", "posttrain", "eval", "scaling", "alpha", "crosscheck", "train-prm",
                                               "prm", "paper", "bench"]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "import time:" in line}
    assert "experiments" in imported and not imported & {"torch", "transformers", "pretrain", "posttrain", "eval"}


def test_an_unknown_command_is_one_line():
    proc = barrierlab("pretrian", "--config", "configs/tiny/pretrain.yaml")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: unknown command 'pretrian'; use one of pretrain, posttrain, eval, scaling, alpha, "
                           "crosscheck, train-prm, prm, paper, bench (barrierlab --help)\n")


def test_a_stage_through_the_command_is_the_python_m_run(tiny_base, tmp_path):
    """``tiny_base`` is ``python -m pretrain --config configs/tiny/pretrain.yaml`` with one thread."""
    run_dir = tmp_path / "base"
    proc = barrierlab("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    for name in ("model/model.safetensors", "model/task.json", "support.json", "data/eval_prompts/dataset_info.json"):
        assert (run_dir / name).read_bytes() == (tiny_base / name).read_bytes(), name
    assert metrics(run_dir, timings=False) == metrics(tiny_base, timings=False)


def test_sweep_commands_default_to_their_experiments_config(capsys):
    assert sweep_args("scaling", sweep, ["--seeds", "[0]"]) == ["--config", "configs/scaling.yaml", "--seeds", "[0]"]
    assert sweep_args("alpha", sweep, [])[:2] == ["--config", "configs/alpha.yaml"]
    given = ["--config", "configs/tiny/alpha.yaml"]
    assert sweep_args("alpha", sweep, given) == given
    err = one_line_error(main, ["alpha", "--config", "configs/tiny/scaling.yaml"], capsys)
    assert "configs/tiny/scaling.yaml and the flags given set experiment: scaling; run barrierlab scaling" in err
    err = one_line_error(main, ["alpha", "--config", "configs/tiny/alpha.yaml", "--experiment", "scaling"], capsys)
    assert "configs/tiny/alpha.yaml and the flags given set experiment: scaling; run barrierlab scaling" in err


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_no_command_prints_the_usage(argv, capsys):
    assert main(argv) == (0 if argv else 2)
    out, err = capsys.readouterr()
    assert "usage: barrierlab <command>" in (out if argv else err) and "  bench " in (out if argv else err)
