"""End-to-end pretraining: outputs, loadable checkpoint, support.json, resume after a kill, bad paths."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import barrierlab.models  # noqa: F401  (registers the linear policy with the Auto classes)
from barrierlab.loading import load_dataset_dir
from barrierlab.rundir import read_metrics
from barrierlab.training import batch_rows
from tests.conftest import TINY, run_stage
from tests.test_trackers import tensorboard_scalars


def test_pretrain_writes_a_loadable_base_run(tiny_base):
    for name in ("config.yaml", "metrics.jsonl", "support.json", "support.png", "model/model.safetensors",
                 "model/tokenizer.json", "model/task.json"):
        assert (tiny_base / name).exists(), name
    assert any((tiny_base / "tb").iterdir())
    model = AutoModelForCausalLM.from_pretrained(tiny_base / "model")
    assert model.config.model_type == "llama"
    eval_set = load_dataset_dir(tiny_base / "data" / "eval_prompts",
                                ["prompt_ids", "target_ids", "cluster", "designed_alpha", "base_alpha", "base_token_min_prob"])
    assert len(eval_set) == 3 * 16
    alpha = torch.tensor(eval_set["base_alpha"])
    token_min = torch.tensor(eval_set["base_token_min_prob"])
    assert torch.all(alpha <= token_min + 1e-9)  # a product of probabilities is at most its smallest factor
    rows = [json.loads(line) for line in (tiny_base / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr"} <= set(rows[0])
    assert any("eval/log10_alpha_c0" in r for r in rows)


def test_batches_walk_one_seeded_shuffle_per_epoch():
    """Corpus of 10 rows, batches of 4: step 2 takes the last 2 rows of epoch 0's order and the first 2 of epoch 1's;
    every epoch visits each row once, and the order depends on (seed, epoch) only, so a resumed run repeats it."""
    order = [torch.randperm(10, generator=torch.Generator().manual_seed(7 * 1_000_003 + e)).tolist() for e in (0, 1, 2)]
    assert order[0] != order[1]
    steps = [batch_rows(step, 4, 10, seed=7).tolist() for step in range(5)]
    assert steps == [order[0][:4], order[0][4:8], order[0][8:] + order[1][:2], order[1][2:6], order[1][6:]]
    assert batch_rows(2, 4, 10, seed=7).tolist() == steps[2]  # asked again, out of order: the same rows
    assert batch_rows(0, 4, 10, seed=8).tolist() != steps[0]
    assert batch_rows(0, 25, 10, seed=7).tolist() == order[0] + order[1] + order[2][:5]  # a batch over three epochs


def test_support_json_summarises_the_eval_set(tiny_base):
    summary = json.loads((tiny_base / "support.json").read_text())
    eval_set = load_dataset_dir(tiny_base / "data" / "eval_prompts", ["base_alpha"])
    alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64)
    clusters = torch.tensor(eval_set["cluster"])
    row = summary["clusters"][1]
    assert row["coverage"] == "sequence(0.5)" and abs(row["designed_alpha"] - (0.5 + 0.5 / 27)) < 1e-12
    geo = alpha[clusters == 1].log().mean().exp().item()
    assert abs(row["alpha_geomean"] - geo) < 1e-9 * max(geo, 1e-300)
    assert summary["uniform_alpha"] == 3.0**-3
    assert len(summary["LQ"]) == len(summary["eps"]) == len(summary["token_LQ"])
    assert all(tl >= q for tl, q in zip(summary["token_LQ"], summary["LQ"]))  # Q^TL ≥ Q always


def test_linear_model_pretrains_and_learns(tiny_linear_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_linear_base / "model")
    assert model.config.model_type == "barrierlab_linear"
    summary = json.loads((tiny_linear_base / "support.json").read_text())
    exact = summary["clusters"][0]
    assert exact["alpha_geomean"] > 3 * summary["uniform_alpha"]  # moved away from the uniform init
    config = (tiny_linear_base / "config.yaml").read_text()
    assert "optimizer: adagrad" in config and "lr: 0.1" in config  # 'auto' resolved in the saved config


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    # killed at step 37, between the checkpoints of steps 35 and 40: steps 36-37 are redone; 40 steps of 64 rows
    # cross the 2000-row corpus's epoch boundary (a reshuffle) before the kill
    args = ["--config", str(TINY / "pretrain.yaml"), "--train.steps", "40", "--run.checkpoint_every", "5",
            "--train.log_every", "1"]
    run_stage("pretrain", *args, "--run.run_dir", str(tmp_path / "straight"))
    killed = run_stage("pretrain", *args, "--run.run_dir", str(tmp_path / "resumed"),
                       env={"BARRIERLAB_KILL_AFTER_STEP": "37"}, check=False)
    assert killed.returncode == -9
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = run_stage("pretrain", *args, "--run.run_dir", str(tmp_path / "resumed"))
    assert "resuming" in resumed.stdout + resumed.stderr
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    rows = {name: read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "resumed")}
    assert rows["resumed"] == rows["straight"]  # the same values, no duplicated or lost lines
    # TensorBoard too: the killed run's events after its checkpoint (steps 36-37) are purged, not shown twice
    scalars = {name: tensorboard_scalars(tmp_path / name / "tb" / "barrierlab")["train/loss"] for name in ("straight", "resumed")}
    assert [step for step, _ in scalars["resumed"]] == list(range(1, 41))
    assert scalars["resumed"] == scalars["straight"]


def test_a_dataset_a_kill_left_unwritten_is_rebuilt_on_rerun(tiny_base, tmp_path):
    # a kill between the corpus and the eval prompts, or between the renames that replace eval_prompts in finish()
    # (which writes support.json after them)
    run_dir = tmp_path / "base"
    shutil.copytree(tiny_base, run_dir)
    (run_dir / "support.json").unlink()
    shutil.rmtree(run_dir / "data" / "eval_prompts")
    (run_dir / "data" / ".tmp_eval_prompts").mkdir()  # a half-written one beside it
    run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(run_dir))
    columns = ["prompt_ids", "target_ids", "cluster", "base_alpha", "base_token_min_prob"]
    rebuilt, original = (load_dataset_dir(d / "data" / "eval_prompts", columns) for d in (run_dir, tiny_base))
    assert all(rebuilt[c] == original[c] for c in columns)
    assert not (run_dir / "data" / ".tmp_eval_prompts").exists()


def test_rerun_of_a_finished_base_changes_nothing(tiny_base, tmp_path):
    run_dir = tmp_path / "base"
    shutil.copytree(tiny_base, run_dir)
    (run_dir / "model" / "notes.txt").write_text("mine")
    # config.yaml records the folder's new place (run.run_dir); the lock file, the process that held it
    kept = lambda: {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name not in (".lock", "config.yaml")}  # noqa: E731
    before = kept()
    proc = run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(run_dir))
    assert f"{run_dir} already finished" in proc.stdout and "resuming" not in proc.stdout
    assert kept() == before


def test_rerun_with_a_different_config_is_refused(tiny_base, tmp_path):
    run_dir = tmp_path / "base"  # a copy: a broken refusal must not damage the session's base
    shutil.copytree(tiny_base, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(run_dir),
                     "--task.k", "4", check=False)
    assert proc.returncode == 2 and "different config (key 'task.k': 3 there, 4 now)" in proc.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_column_tensor_reads_list_and_scalar_columns(tmp_path):
    from datasets import Dataset

    from barrierlab.errors import UserError
    from barrierlab.loading import column_tensor

    rows = {"ids": [[1, 2, 3], [4, 5, 6]], "cluster": [7, 8], "ragged": [[1], [2, 3]]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path))
    ds = load_dataset_dir(tmp_path, ["ids"])
    ids = column_tensor(ds, "ids")
    assert ids.tolist() == rows["ids"] and ids.dtype == torch.long and column_tensor(ds, "cluster").tolist() == [7, 8]
    with pytest.raises(UserError, match="same length"):
        column_tensor(ds, "ragged")


def test_a_diverged_pretraining_stops_in_one_line(tmp_path):
    proc = run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(tmp_path / "b"),
                     "--train.lr", "1e30", "--train.log_every", "1", check=False)
    assert proc.returncode == 2 and re.search(r"training diverged: train/grad_norm is (nan|inf) at step \d+", proc.stderr)
    assert proc.stderr.strip().endswith("lower train.lr and rerun in a new run_dir") and "Traceback" not in proc.stderr
