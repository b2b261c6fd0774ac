"""A killed TRL-backend run resumes from the run's own checkpoint and ends as the uninterrupted run does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, metrics, run_stage


@pytest.mark.parametrize("config, extra, stop", [
    # ±1 process rewards through the per-token subclass: every step samples (global RNG) and moves the weights
    ("posttrain_process.yaml", ["--reward.signed", "true"], "max_steps"),
    # killed right after the checkpoint of the step that spent the budget: the resumed run must not train on
    ("posttrain_outcome.yaml", ["--optim.max_queries", "100"], "max_queries"),
])
def test_trl_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_base, config, extra, stop):
    args = ["--config", str(TINY / config), "--base", str(tiny_base), "--backend", "trl", "--optim.max_steps", "6",
            "--run.checkpoint_every", "2", "--algo.group_size", "4", *extra]
    straight = run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "straight"))
    assert "'luspo'" not in straight.stderr  # TRL's advice against the deliberate token-level ratio is filtered out
    killed = run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "resumed"),
                       env={"BARRIERLAB_KILL_AFTER_STEP": "4"}, check=False)
    assert killed.returncode == -9
    proc = run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "resumed"))
    assert "resuming" in proc.stdout and "from step 4" in proc.stdout
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    rows = metrics(tmp_path / "straight", timings=False)
    assert rows == metrics(tmp_path / "resumed", timings=False) and rows[-1]["done/stop_reason"] == stop
