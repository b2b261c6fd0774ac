"""A killed TRL-backend run resumes from the run's own checkpoint and ends as the uninterrupted run does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, run_stage

pytest.importorskip("trl")

MEASURED = ("train/update_time_s", "done/wall_time_s", "done/peak_memory_mb")  # of the machine, not the run


def metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def test_trl_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_base):
    # ±1 process rewards through the per-token subclass: every step samples (global RNG) and moves the weights
    args = ["--config", str(TINY / "posttrain_process.yaml"), "--base", str(tiny_base), "--backend", "trl",
            "--optim.max_steps", "6", "--run.checkpoint_every", "2", "--algo.group_size", "4", "--reward.signed", "true"]
    run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "straight"))
    killed = run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "resumed"),
                       env={"BARRIERLAB_KILL_AFTER_STEP": "4"}, check=False)
    assert killed.returncode == -9
    proc = run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "resumed"))
    assert "resuming" in proc.stdout and "from step 4" in proc.stdout
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "resumed")
