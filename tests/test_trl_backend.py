"""The TRL backend: a few steps of each reward type on the tiny base, the standard outputs, and the per-token
advantages the process trainer hands TRL. Calls ``run_trl`` with the arguments ``posttrain.stage.run_posttrain`` builds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from barrierlab.config import load_config
from barrierlab.errors import UserError
from barrierlab.loading import load_dataset_dir, load_model_dir, model_fingerprint, prompt_tensors
from barrierlab.policy import ResponseLogits, target_stats
from barrierlab.rundir import RunDir
from barrierlab.tasks import task_from_info
from barrierlab.tokenizer import ANSWER0, answer_ids
from barrierlab.training import make_accelerator, seed_everything
from posttrain.advantages import advantages
from posttrain.bookkeeping import Bookkeeper
from posttrain.config import PosttrainConfig
from posttrain.evaluation import ExactEval
from posttrain.for_trl import RewardFunction, prompt_dataset
from posttrain.loss import policy_gradient_loss
from posttrain.prompts import PromptSource
from posttrain.stage import run_reward
from posttrain.trl_backend import (
    LEFT_TO_TRL,
    _trainer_classes,
    build_trainer,
    check_supported,
    grpo_config,
    grpo_fields,
    run_trl,
)
from tests.conftest import ROOT, TINY, metrics

SMALL = ["--optim.batch_size", "8", "--algo.group_size", "4", "--optim.max_steps", "3",
         "--eval.eval_every", "2", "--run.checkpoint_every", "2"]


def prepare(run_dir: Path, base: Path, *overrides: str) -> dict:
    """What main() builds before its loop: the arguments of run_trl."""
    cfg = load_config(PosttrainConfig, ["--config", str(TINY / "posttrain_outcome.yaml"), "--base", str(base),
                                        "--run.run_dir", str(run_dir), *SMALL, *overrides])
    reward = run_reward(cfg)
    base_dir = Path(cfg.base)
    model, tokenizer, task_info = load_model_dir(base_dir / "model")
    check_supported(cfg, model)
    eval_set = load_dataset_dir(base_dir / "data" / "eval_prompts", ["prompt_ids", "target_ids", "base_alpha"])
    acc = make_accelerator(cfg.run)  # main() has one before it dispatches: TRL's Trainer must agree with its state
    task = task_from_info(task_info)
    threshold = cfg.eval.offsupport_threshold or task_info["offsupport_threshold"]
    prompts = PromptSource(task, torch.Generator().manual_seed(cfg.run.seed * 7919))
    run = RunDir(cfg, cfg.run)
    seed_everything(cfg.run.seed)
    evaluator = ExactEval(eval_set, threshold, cfg.eval.num_tracked, task.k, acc.device, cfg.prompts.clusters)
    books = Bookkeeper(cfg, run, evaluator, N=task.N, base_id=model_fingerprint(base_dir / "model"),
                       files={"task.json": (base_dir / "model" / "task.json").read_text()})
    return dict(cfg=cfg, books=books, acc=acc, model=model, tokenizer=tokenizer, reward=reward, task=task,
                prompts=prompts)


def run_backend(run_dir: Path, base: Path, *overrides: str) -> None:
    kw = prepare(run_dir, base, *overrides)
    run_trl(kw.pop("cfg"), kw.pop("books"), **kw)


@pytest.mark.parametrize("reward, extra", [
    ("outcome", ["--algo.baseline", "group_mean"]),               # stock GRPOTrainer, TRL's own advantages
    ("process", ["--algo.baseline", "none", "--reward.signed", "true"]),  # the per-token subclass
])
def test_trl_backend_writes_the_standard_outputs(tmp_path, tiny_base, reward, extra):
    run_dir = tmp_path / "run"
    run_backend(run_dir, tiny_base, "--reward.name", reward, *extra)
    rows = metrics(run_dir)
    train = [r for r in rows if "train/reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("train/reward_queries", "train/samples", "train/success_rate", "train/loss", "train/grad_norm",
                "train/entropy"):
        assert all(r[key] is not None for r in train), key
    assert [r["train/samples"] for r in train] == [8, 16, 24]
    queries = [r["train/reward_queries"] for r in train]
    if reward == "outcome":
        assert queries == [8, 16, 24]  # one query per response
    else:
        assert all(8 <= b - a <= 8 * 3 for a, b in zip([0] + queries[:-1], queries, strict=True))  # 1..N per response
    # TRL's entropy is over the k = 3 answers only (the answer bias), as the native train/entropy
    assert all(0 <= r["train/entropy"] <= torch.log(torch.tensor(3.0)).item() + 1e-4 for r in train)
    evals = [r for r in rows if "eval/likelihood" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert len(evals[-1]["eval/tracked_likelihood"]) == 4 and "eval/offsupport_likelihood" in evals[-1]
    done = {"step": 3, "done/stop_reason": "max_steps", "done/steps": 3, "done/reward_queries": queries[-1]}
    assert done.items() <= rows[-1].items()
    # the native engine's run of the same config logs the same metric names, row kind by row kind
    from posttrain.__main__ import main

    main(["--config", str(TINY / "posttrain_outcome.yaml"), "--base", str(tiny_base), "--run.run_dir",
          str(tmp_path / "native"), *SMALL, "--reward.name", reward, *extra])
    kinds = lambda rows: sorted({tuple(sorted(r)) for r in rows})  # noqa: E731
    assert kinds(metrics(tmp_path / "native")) == kinds(rows)

    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_0000002", "step_0000003"]
    assert not (run_dir / ".trl_output").exists()  # TRL's scratch output_dir is gone once the run is done
    state = torch.load(run_dir / "checkpoints" / "step_0000003" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3 and state["queries"] == queries[-1] and state["optimizer"]["state"]
    # the final model loads as the base did, without the training-time answer bias, and has moved
    model, _, info = load_model_dir(run_dir / "model")
    assert info == json.loads((tiny_base / "model" / "task.json").read_text())
    weights = load_file(str(run_dir / "model" / "model.safetensors"))
    base = load_file(str(tiny_base / "model" / "model.safetensors"))
    assert set(weights) == set(base)  # no lm_head.bias
    for name in ("config.json", "generation_config.json"):  # nor TRL's eos / use_cache changes
        assert json.loads((run_dir / "model" / name).read_text()) == json.loads((tiny_base / "model" / name).read_text())
    if reward == "process":  # ±1 prefix rewards without baseline: every step has a gradient
        assert any(not torch.equal(weights[n], base[n]) for n in base)


def test_query_budget_stops_the_trl_run(tmp_path, tiny_base):
    run_backend(tmp_path / "q", tiny_base, "--algo.baseline", "group_mean", "--optim.max_queries", "12")
    rows = metrics(tmp_path / "q")
    assert rows[-1]["done/stop_reason"] == "max_queries" and rows[-1]["done/steps"] == 2
    assert rows[-1]["done/reward_queries"] == 16
    assert [r["step"] for r in rows if "eval/likelihood" in r] == [0, 2]


def test_group_size_one_is_a_user_error(tmp_path, tiny_base):
    with pytest.raises(UserError, match="group_size 1: the trl backend needs ≥ 2"):
        run_backend(tmp_path / "g", tiny_base, "--algo.group_size", "1")


@pytest.mark.parametrize("args, linear, words", [
    (["--algo.behaviour", "uniform"], False, "algo.behaviour 'uniform': the trl backend samples on-policy only"),
    (["--optim.optimizer", "adaptive"], False, "optim.optimizer 'adaptive' needs per-response gradients"),
    ([], True, "TRL needs a transformer base (model.kind transformer)"),
])
def test_what_trl_cannot_run_is_refused_in_one_line(tiny_base, tiny_linear_base, args, linear, words):
    cfg = load_config(PosttrainConfig, ["--config", str(TINY / "posttrain_outcome.yaml"), "--algo.group_size", "4", *args])
    model = load_model_dir((tiny_linear_base if linear else tiny_base) / "model")[0]
    with pytest.raises(UserError, match=re.escape(words)):
        check_supported(cfg, model)


@pytest.mark.parametrize("baseline, expected", [
    # two prompts (G = 2) with per-prefix rewards; group mean of prompt 0 is [1, .5, 0], of prompt 1 [.5, .5, .5]
    ("group_mean", [[0.0, 0.5, 0.0], [0.0, -0.5, 0.0], [-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]),
    ("none", [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ("batch_mean", [[0.5, 0.5, -0.5], [0.5, -0.5, -0.5], [-0.5] * 3, [0.5] * 3]),  # batch mean 6 / 12
])
def test_process_trainer_hands_trl_its_per_token_advantages(monkeypatch, baseline, expected):
    stock, prefix = _trainer_classes()
    rewards = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.ones(4, 3)
    trl_out = {"completion_ids": torch.zeros(4, 3, dtype=torch.long), "completion_mask": mask,
               "advantages": torch.full((4,), 7.0)}  # TRL's own (B,) advantages: must be replaced
    monkeypatch.setattr(stock, "_generate_and_score_completions", lambda self, inputs: dict(trl_out))
    trainer = prefix.__new__(prefix)  # only the override is under test: no model, no generation
    trainer.reward_fn = SimpleNamespace(values=rewards)
    trainer.algo = SimpleNamespace(baseline=baseline, group_size=2, scale_std=False)
    out = trainer._generate_and_score_completions([{}] * 4)
    assert out["advantages"].shape == (4, 3)
    assert torch.allclose(out["advantages"], torch.tensor(expected))


@pytest.mark.parametrize("reward, extra", [
    ("outcome", ["--algo.baseline", "group_mean", "--algo.scale_std", "true"]),  # TRL's own advantages
    ("process", ["--algo.baseline", "rloo"]),                                    # ours, (B, N)
])
def test_trl_gradient_is_the_native_policy_gradient(tmp_path, tiny_base, reward, extra):
    """One TRL batch: the gradient of TRL's loss equals the native -Σ_i A_i ∇log p(y_i|x, y_<i) / B on it
    (luspo normalisation, answer bias, on-policy ratio 1)."""
    # full precision on both sides (on a GPU both backends would otherwise use bf16 autocast)
    kw = prepare(tmp_path / "run", tiny_base, "--reward.name", reward, "--optim.batch_size", "32",
                 "--run.mixed_precision", "no", *extra)
    cfg, model, task = kw["cfg"], kw["model"], kw["task"]
    G = cfg.algo.group_size
    reward_fn = RewardFunction(kw["reward"], kw["tokenizer"], task.N)
    dataset = prompt_dataset(kw["prompts"], 1, cfg.optim.batch_size // G)
    trainer = build_trainer(cfg, model, kw["tokenizer"], reward_fn, dataset, task.k, task.N, str(tmp_path / "trl"),
                            cfg.optim.max_steps)
    batch = trainer._generate_and_score_completions([row for row in dataset for _ in range(G)])  # as RepeatSampler
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    trainer._compute_loss(model, batch).backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    responses = batch["completion_ids"] - ANSWER0
    assert responses.shape == (32, task.N) and responses.min() >= 0 and responses.max() < task.k
    rollout = SimpleNamespace(prompts=batch["prompt_ids"], responses=responses, mask=torch.ones(responses.shape, device=responses.device))
    adv = advantages(reward_fn.values, cfg.algo.baseline, G, cfg.algo.scale_std).to(responses.device)
    assert adv.abs().sum() > 0  # a batch with a learning signal, or the comparison says nothing
    loss, _ = policy_gradient_loss(ResponseLogits(model, answer_ids(task.k)), rollout, adv, task.k)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(trl_grads[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_every_grpo_field_that_can_act_is_set_from_our_config(tmp_path):
    """TRL's defaults are sized for large models and change between versions: each GRPOConfig field is set by
    grpo_fields or named in LEFT_TO_TRL as inert here (a field a new TRL adds fails this test until it is decided)."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import GRPOConfig

    cfg = load_config(PosttrainConfig, ["--config", str(TINY / "posttrain_outcome.yaml"), *SMALL, "--algo.kl_coef", "0.1",
                                        "--optim.optimizer", "adagrad", "--optim.lr", "0.05"])
    own = {f.name for f in dataclasses.fields(GRPOConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    assert own - set(grpo_fields(cfg, 3, 3, 9, str(tmp_path), 5)) == LEFT_TO_TRL
    args = grpo_config(cfg, 3, 3, 9, str(tmp_path), 5)
    assert (args.learning_rate, args.optim, args.lr_scheduler_type, args.max_completion_length, args.beta) == (
        0.05, "adagrad", "constant", 3, 0.1)
    assert not (args.gradient_checkpointing or args.bf16 or args.use_vllm or args.shuffle_dataset)
    assert (args.num_iterations, args.per_device_train_batch_size, args.generation_batch_size, args.num_generations,
            args.steps_per_generation) == (1, 8, 8, 4, 1)  # on-policy: one update per generation of B = 8


def test_the_documented_trl_script_trains_and_saves_a_checkpoint_eval_reads(tmp_path, tiny_base):
    readme = (ROOT / "docs" / "stages.md").read_text()
    section = readme[readme.index("## Your own TRL script"):]
    start = section.index("```python\n") + len("```python\n")
    script = section[start : section.index("```\n", start)]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "base").symlink_to(tiny_base)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1280 reward queries" in proc.stdout  # 20 steps × 64 completions, one outcome verdict each

    trained, _, _ = load_model_dir(tmp_path / "runs" / "my_grpo" / "model")  # as eval loads it
    base, _, info = load_model_dir(tiny_base / "model")
    assert trained.get_output_embeddings().bias is None and trained.config.eos_token_id == base.config.eos_token_id
    eval_set = load_dataset_dir(tiny_base / "data" / "eval_prompts", ["prompt_ids", "target_ids"])
    prompts, targets = prompt_tensors(eval_set)
    k = info["task"]["k"]
    before, after = (target_stats(m.eval(), prompts, targets, k)[0].exp().mean().item() for m in (base, trained))
    assert after > before + 0.01  # 20 outcome PG steps raised the mean likelihood of y*
