"""``--help`` and a config error answer before torch is imported: each stage loads and checks its config first.
Checked in fresh interpreters, as a user types the commands: which modules they import (``python -X importtime``),
and their time against ``python -c pass`` and ``python -c "import torch"`` on the same machine at the same time."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

HEAVY = {"torch", "transformers", "accelerate", "datasets", "trl", "matplotlib"}
COMMANDS = {  # what is typed → (arguments of python, exit code, what stderr says)
    "pretrain --help": (["-m", "pretrain", "--help"], 0, ""),
    "posttrain --help": (["-m", "posttrain", "--help"], 0, ""),
    "eval --help": (["-m", "eval", "--help"], 0, ""),
    "pretrain, unknown key": (["-m", "pretrain", "--train.stepz", "5"], 2, "--train.stepz: unknown key (did you mean 'steps'?)"),
    "posttrain, bad value": (["-m", "posttrain", "--optim.lr", "-1"], 2, "key 'optim.lr': must be > 0"),
    "posttrain, unknown reward": (["-m", "posttrain", "--reward.name", "outcom"], 2, "unknown reward 'outcom'"),
    "eval, missing config file": (["-m", "eval", "--config", "nope.yaml"], 2, "config file 'nope.yaml' not found"),
    "posttrain, what trl cannot run": (["-m", "posttrain", "--backend", "trl", "--algo.behaviour", "uniform"], 2,
                                       "the trl backend samples on-policy only"),
    "rewards.train_prm --help": (["-m", "rewards.train_prm", "--help"], 0, ""),
    "rewards.train_prm, bad value": (["-m", "rewards.train_prm", "--labels.source", "oracle"], 2, "key 'labels.source'"),
}


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_and_config_errors_import_no_torch(command):
    args, code, says = COMMANDS[command]
    proc = python("-X", "importtime", *args)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "yaml" in imported and "barrierlab" in imported  # the probe sees the imports
    assert not imported & HEAVY, f"{command} imports {sorted(imported & HEAVY)}"
    err = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == code, proc.stderr[-2000:]
    if code == 0:
        assert proc.stdout.startswith("usage: python -m ") and ("--run.run_dir" in proc.stdout or "--out_dir" in proc.stdout)
        assert err == []
    else:
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def median_seconds(args: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        python(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_help_and_config_errors_answer_faster_than_importing_torch():
    """The stage commands against the two ends, measured side by side (median of 3): an empty interpreter and one
    that imports torch. What a command adds to the empty interpreter must be a small part of what torch adds."""
    empty = median_seconds(["-c", "pass"])
    torch = median_seconds(["-c", "import torch"])
    timed = {command: median_seconds(COMMANDS[command][0]) for command in sorted(COMMANDS)}
    report = "\n".join(f"  {command:28s} {t:6.3f} s  ×{t / empty:5.1f} python -c pass" for command, t in timed.items())
    print(f"\npython -c pass {empty:.3f} s, python -c 'import torch' {torch:.3f} s (×{torch / empty:.1f})\n{report}")
    slow = {command: t for command, t in timed.items() if t - empty > 0.25 * (torch - empty)}
    assert not slow, f"slower than a quarter of torch's import ({torch - empty:.2f} s over an empty interpreter):\n{report}"
