"""Every Makefile target that runs a stage, end to end on the tiny configs."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def make(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", f"PYTHON={sys.executable}", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_make_pipeline_on_tiny_configs_then_clean(tmp_path):
    runs = tmp_path / "runs"
    make("pipeline", "CONFIGS=configs/tiny", f"RUNS={runs}")
    for path in ("base/support.png", "outcome/model/model.safetensors", "process/model/model.safetensors",
                 "eval/eval.json", "eval/report.md", "eval/figures"):
        assert (runs / path).exists(), path
    report = json.loads((runs / "eval" / "eval.json").read_text())
    assert set(report["checkpoints"]) == {"base", "outcome", "process"}
    make("clean", f"RUNS={runs}")
    assert not runs.exists()


def test_make_pretrain_and_posttrain_linear(tmp_path):
    runs = tmp_path / "runs"
    make("pretrain", "MODEL=linear", "CONFIGS=configs/tiny", f"RUNS={runs}")
    make("posttrain", "MODEL=linear", "REWARD=process", "CONFIGS=configs/tiny", f"RUNS={runs}")
    assert (runs / "base_linear" / "model" / "task.json").exists()
    assert (runs / "process_linear" / "model" / "model.safetensors").exists()


def test_make_help_lists_targets():
    out = make("help").stdout
    for target in ("install", "pretrain", "posttrain", "eval", "pipeline", "test", "lint", "clean"):
        assert target in out
