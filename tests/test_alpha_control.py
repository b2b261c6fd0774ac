"""The α control: a pretraining run's measured base likelihood lands on its design. At test size on every run of the
suite; on the default base and other k, N and profiles in the slow set."""

from __future__ import annotations

import json

import pytest

from pretrain.config import load_pretrain_config
from pretrain.support import control_check
from tests.conftest import ROOT, run_stage

CONFIGS = ["pretrain.yaml", "variants/pretrain_k4_n12.yaml", "variants/pretrain_k16_n4.yaml"]


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) for c in CONFIGS] + ["variants/pretrain_k4_n4.yaml"])
def test_measured_alpha_matches_the_design(tmp_path, config):
    run_stage("pretrain", "--config", str(ROOT / "configs" / config), "--run.run_dir", str(tmp_path / "base"),
              "--run.progress", "false")
    summary = json.loads((tmp_path / "base" / "support.json").read_text())
    profile = load_pretrain_config(["--config", str(ROOT / "configs" / config)]).profile
    assert [row["coverage"] for row in summary["clusters"]] == [c.label() for c in profile]  # every cluster measured
    assert control_check(summary) == []


def test_control_check_flags_misses():
    summary = {"uniform_alpha": 1e-8, "clusters": [
        {"cluster": 0, "coverage": "exact", "designed_alpha": 1.0, "alpha_geomean": 0.5},
        {"cluster": 1, "coverage": "sequence(0.1)", "designed_alpha": 0.1, "alpha_geomean": 0.02},
        {"cluster": 2, "coverage": "token(0.9)", "designed_alpha": 1e-6, "alpha_geomean": 1e-9},  # below 1e-3: not checked
        {"cluster": 3, "coverage": "sequence(0)", "designed_alpha": 1e-8, "alpha_geomean": 2e-7},
        {"cluster": 4, "coverage": "sequence(0.05)", "designed_alpha": 0.05, "alpha_geomean": 0.2},  # above, ×4
        {"cluster": 5, "coverage": "sequence(0.05)", "designed_alpha": 0.05, "alpha_geomean": 0.149},  # within ×3
    ]}
    misses = control_check(summary)
    assert [m.split(":")[0] for m in misses] == ["cluster 1 sequence(0.1)", "cluster 3 sequence(0)", "cluster 4 sequence(0.05)"]
    assert misses[2] == "cluster 4 sequence(0.05): measured α 0.2 is not within ×3 of the design 0.05"
