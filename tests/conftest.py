"""Shared fixtures: a tiny task and a tiny pretrained base run (built once per session, in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from barrierlab.rundir import read_metrics

# pytest-xdist runs one worker per core: with torch's default of one thread per core in each, the workers'
# OpenMP threads oversubscribe the cores and spin against each other (many times slower, measured)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny"


@pytest.fixture(autouse=True, scope="session")
def _from_the_repository_root():
    """Tests name configs as a user at the repository root does ("configs/tiny/scaling.yaml"), so they run from
    there wherever pytest was started."""
    before = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(before)


MEASURED = ("train/update_time_s", "done/wall_time_s", "done/peak_memory_mb")  # of the machine, not of the run


def wait_for(condition, seconds: float, every: float = 0.1) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def metrics(run_dir: Path, timings: bool = True) -> list[dict]:
    """A run's metrics.jsonl rows; without ``timings``, less what the machine measured (for comparing runs)."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return rows if timings else [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def run_stage(stage: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m <stage> args`` from the repo root, as a user would."""
    # one thread per stage process: the tiny models gain nothing from more, and pytest-xdist runs two at once
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", stage, *args], cwd=ROOT, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{stage} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(main, argv: list[str], capsys) -> str:
    """Run a stage's ``main`` in this process on bad input: it must exit 2 with one line on stderr and no traceback
    (the same wrapper as the command line; run in-process, a test skips the seconds of a fresh interpreter)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def run_make(*args: str) -> subprocess.CompletedProcess:
    """``make args`` from the repo root with this interpreter, as a user would; fails the test on a non-zero exit."""
    proc = subprocess.run(["make", f"PYTHON={sys.executable}", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A base run of the tiny transformer config: model/, data/eval_prompts (with base_alpha), support.json."""
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(run_dir))
    return run_dir


@pytest.fixture(scope="session")
def tiny_linear_base(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "base_linear"
    run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(run_dir), "--model.kind", "linear")
    return run_dir
