"""The Makefile's stage targets end to end on the tiny configs (scaling, alpha: tests/test_experiments.py; bench,
crosscheck: tests/test_crosscheck_bench.py), and its help."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from barrierlab.rundir import read_metrics
from rewards import REWARDS
from tests.conftest import ROOT
from tests.conftest import run_make as make


def test_make_pipeline_on_tiny_configs(tmp_path):
    runs = tmp_path / "runs"
    make("pipeline", "CONFIGS=configs/tiny", f"RUNS={runs}")
    for path in ("base/support.png", "outcome/model/model.safetensors", "process/model/model.safetensors",
                 "eval/eval.json", "eval/report.md", "eval/figures"):
        assert (runs / path).exists(), path
    report = json.loads((runs / "eval" / "eval.json").read_text())
    assert set(report["checkpoints"]) == {"base", "outcome", "process"}
    figures = sorted(p.name for p in (runs / "eval" / "figures").glob("*.png"))
    assert figures == ["barrier.png", "coverage.png", "passk.png", "passk_exact.png"]


def test_make_clean_keeps_the_virtualenv(tmp_path):
    # in a scratch tree: cleaning the repo itself would race the other tests' imports
    made = ["runs/base/x", ".pytest_cache/x", "pkg/__pycache__/m.pyc", ".venv/lib/__pycache__/t.pyc", ".git/__pycache__/g"]
    for path in made:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    make("-C", str(tmp_path), "-f", str(ROOT / "Makefile"), "clean")
    assert sorted(p for p in made if (tmp_path / p).exists()) == [".git/__pycache__/g", ".venv/lib/__pycache__/t.pyc"]


def test_make_pretrain_and_posttrain_linear(tmp_path):
    runs = tmp_path / "runs"
    make("pretrain", "MODEL=linear", "CONFIGS=configs/tiny", f"RUNS={runs}")
    make("posttrain", "MODEL=linear", "REWARD=process", "CONFIGS=configs/tiny", f"RUNS={runs}", "ARGS=--optim.max_steps 5")
    assert json.loads((runs / "base_linear" / "model" / "config.json").read_text())["model_type"] == "barrierlab_linear"
    done = read_metrics(runs / "process_linear" / "metrics.jsonl")[-1]
    assert (done["done/steps"], done["done/stop_reason"]) == (5, "max_steps")  # ARGS reached the stage
    assert "name: process" in (runs / "process_linear" / "config.yaml").read_text()


@pytest.mark.parametrize("reward, config, run_dir", [
    *((name, cls.granularity, name) for name, cls in REWARDS.items()),  # outcome, process: the pipeline's, as before
    ("tests.user_reward:ParityReward", "outcome", "parityreward")])
def test_make_posttrain_takes_a_reward_by_name_or_import_path_and_names_its_run_folder(reward, config, run_dir):
    command = " ".join(make("posttrain", f"REWARD={reward}", "CONFIGS=configs/tiny", "RUNS=r", "--dry-run").stdout
                       .replace("\\\n", " ").split())
    assert f" -m posttrain --config configs/tiny/posttrain_{config}.yaml --reward.name {reward} --base r/base " \
           f"--run.run_dir r/{run_dir}" in command


def test_make_posttrain_with_a_users_reward(tiny_base, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_base, runs / "base")
    make("posttrain", "REWARD=tests.user_reward:ParityReward", "CONFIGS=configs/tiny", f"RUNS={runs}",
         "ARGS=--optim.max_steps 2")
    done = read_metrics(runs / "parityreward" / "metrics.jsonl")[-1]
    assert (done["done/steps"], done["done/stop_reason"]) == (2, "max_steps")
    assert "name: tests.user_reward:ParityReward" in (runs / "parityreward" / "config.yaml").read_text()
    # an import path that does not resolve: posttrain's one-line error, and no run folder
    proc = subprocess.run(["make", f"PYTHON={sys.executable}", "posttrain", "REWARD=tests.user_reward:NoSuch",
                           "CONFIGS=configs/tiny", f"RUNS={runs}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "error: reward 'tests.user_reward:NoSuch': module 'tests.user_reward' has no " \
           "'NoSuch'" in proc.stderr and "Traceback" not in proc.stderr and not (runs / "nosuch").exists()


def test_make_help_lists_every_target_but_the_reward_shortcuts():
    listed = {line.split("\t")[0] for line in make("help").stdout.splitlines() if "\t" in line}
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1).split()
    assert listed == set(phony) - {"outcome", "process"}  # `make outcome` = `make posttrain REWARD=outcome`


@pytest.mark.parametrize("variable", ["REWARD=foo", "REWARD=", "REWARD=outcome process", "MODEL=lin"])
def test_make_rejects_a_bad_variable_in_one_line(variable):
    proc = subprocess.run(["make", "posttrain", variable, "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    name = variable.split("=")[0]
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and f"{name}='{variable.split('=')[1]}': use" in proc.stderr
