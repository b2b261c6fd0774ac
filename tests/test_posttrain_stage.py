"""End-to-end post-training on the tiny bases: both rewards, both model kinds, resume, budgets, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from barrierlab.loading import load_dataset_dir, load_model_dir, prompt_tensors
from barrierlab.policy import target_stats
from rewards import RewardConfig, make_reward
from tests.conftest import ROOT, TINY, metrics, one_line_error, run_stage

CONFIG = str(TINY / "posttrain_outcome.yaml")


@pytest.mark.parametrize("reward", ["outcome", "process"])
@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_smoke_both_rewards_both_models(tmp_path, tiny_base, tiny_linear_base, reward, kind):
    base = tiny_base if kind == "transformer" else tiny_linear_base
    run_dir = tmp_path / "run"
    run_stage("posttrain", "--config", CONFIG, "--base", str(base), "--run.run_dir", str(run_dir),
              "--reward.name", reward, "--reward.signed", "true")
    rows = metrics(run_dir)
    train = [r for r in rows if "train/reward_mean" in r]
    assert len(train) == 12
    queries = [r["train/reward_queries"] for r in train]
    assert queries == sorted(queries) and queries[0] > 0
    if reward == "outcome":
        assert queries == [32 * (i + 1) for i in range(12)]  # one query per response
    else:
        assert all(32 <= b - a <= 32 * 3 for a, b in zip([0] + queries, queries))
    evals = [r for r in rows if "eval/likelihood" in r]
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    for key in ("eval/onsupport_likelihood", "eval/offsupport_likelihood", "eval/expected_error", "eval/tracked_likelihood"):
        assert key in evals[-1]
    # evaluated exactly, on the base's split: the base's α at step 0, the final model's likelihoods at the end
    eval_set = load_dataset_dir(base / "data" / "eval_prompts", ["prompt_ids", "target_ids", "base_alpha"])
    alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64)
    tracked = alpha.argsort()[torch.linspace(0, len(alpha) - 1, 4).round().long()]  # lowest α, two quantiles, highest
    assert evals[0]["eval/tracked_likelihood"] == pytest.approx(alpha[tracked].tolist(), rel=1e-5)
    model, _, task = load_model_dir(run_dir / "model")
    prompts, targets = prompt_tensors(eval_set)
    final = target_stats(model, prompts, targets, task["task"]["k"])[0].double().exp()
    off = alpha < 0.06
    assert evals[-1]["eval/offsupport_likelihood"] == pytest.approx(final[off].mean().item(), rel=1e-5)
    assert evals[-1]["eval/onsupport_likelihood"] == pytest.approx(final[~off].mean().item(), rel=1e-5)
    assert evals[-1]["eval/tracked_likelihood"] == pytest.approx(final[tracked].tolist(), rel=1e-5)
    for key in ("train/success_rate", "train/entropy", "train/grad_norm", "train/samples"):
        assert key in train[-1]
    assert (run_dir / "model" / "model.safetensors").exists() and (run_dir / "model" / "task.json").exists()
    assert rows[-1]["done/stop_reason"] == "max_steps"


@pytest.mark.parametrize("extra, kill_after", [
    ([], "6"),                             # mid-run: the noisy reward's and both generators' states come back
    # killed right after the checkpoint of the step that spent the budget (32 queries a step: step 8): no more steps
    (["--reward.name", "noisy_outcome", "--optim.max_queries", "250"], "8"),
])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_base, extra, kill_after):
    args = ["--config", CONFIG, "--base", str(tiny_base), "--algo.behaviour", "on_policy", "--run.checkpoint_every", "4",
            *(extra or ["--reward.name", "noisy_process"])]
    run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "straight"))
    killed = run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "resumed"),
                       env={"BARRIERLAB_KILL_AFTER_STEP": kill_after}, check=False)
    assert killed.returncode == -9
    run_stage("posttrain", *args, "--run.run_dir", str(tmp_path / "resumed"))
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    rows = metrics(tmp_path / "straight", timings=False)
    assert rows == metrics(tmp_path / "resumed", timings=False)
    assert (rows[-1]["done/stop_reason"], rows[-1]["done/steps"]) == (("max_queries", 8) if extra else ("max_steps", 12))


def test_a_killed_run_resumes_only_from_the_base_it_was_trained_from(tmp_path, tiny_base, capsys):
    import shutil

    from safetensors.torch import save_file

    from posttrain.__main__ import main

    base, run_dir = tmp_path / "base", tmp_path / "run"
    shutil.copytree(tiny_base, base)
    args = ["--config", CONFIG, "--base", str(base), "--run.run_dir", str(run_dir), "--run.checkpoint_every", "2"]
    assert run_stage("posttrain", *args, env={"BARRIERLAB_KILL_AFTER_STEP": "4"}, check=False).returncode == -9
    weights = base / "model" / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    save_file({name: t * 1.01 for name, t in tensors.items()}, str(weights), metadata={"format": "pt"})  # rebuilt
    before = (run_dir / "metrics.jsonl").read_text()
    err = one_line_error(main, args, capsys)
    assert f"the base '{base}' is not the one {run_dir} was trained from" in err
    assert (run_dir / "metrics.jsonl").read_text() == before
    weights.write_bytes(original)  # the base it was trained from: it resumes
    main(args)
    assert metrics(run_dir)[-1]["done/steps"] == 12


def test_the_base_may_be_named_another_way_and_another_kind_of_run_is_named_as_such(tmp_path, tiny_base, capsys):
    from posttrain.__main__ import main

    args = ["--config", CONFIG, "--run.run_dir", str(tmp_path / "r"), "--optim.max_steps", "2"]
    main([*args, "--base", str(tiny_base)])
    main([*args, "--base", f"{tiny_base}/./"])  # tab completion's trailing slash: the same base, the finished run
    assert "already finished" in capsys.readouterr().out
    pretrain_run = shutil.copytree(tiny_base, tmp_path / "pretrain_run")  # a copy: were it not refused, the shared base stays whole
    err = one_line_error(main, ["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(pretrain_run)], capsys)
    assert f"{pretrain_run} already holds another kind of run (its config.yaml has run, task, profile" in err


@pytest.mark.parametrize("backend", ["native", "trl"])
def test_a_diverged_run_stops_in_one_line(tmp_path, tiny_base, capsys, backend):
    from posttrain.__main__ import main

    err = one_line_error(main, ["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "r"),
                                "--backend", backend, "--algo.group_size", "4", "--algo.baseline", "group_mean",
                                "--reward.signed", "true", "--optim.optimizer", "sgd", "--optim.lr", "1e30"], capsys)
    assert re.search(r"training diverged: (train/grad_norm is (nan|inf)|train/loss is nan|the weights are no longer "
                     r"finite) at step \d+; lower optim.lr and rerun in a new run_dir", err)


def test_query_budget_and_target_stop(tmp_path, tiny_base):
    run_stage("posttrain", "--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "q"),
              "--optim.max_queries", "100")
    last = metrics(tmp_path / "q")[-1]
    assert last["done/stop_reason"] == "max_queries" and last["done/reward_queries"] == 128 and last["done/steps"] == 4
    run_stage("posttrain", "--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "t"),
              "--algo.behaviour", "teacher_forcing", "--optim.lr", "0.05", "--optim.max_steps", "400",
              "--optim.target_likelihood", "0.5", "--optim.stop_on", "all")
    rows = metrics(tmp_path / "t")
    assert rows[-1]["done/stop_reason"] == "target_likelihood"
    assert [r for r in rows if "eval/likelihood" in r][-1]["eval/likelihood"] >= 0.5


def moved(run_dir, base) -> bool:
    """Whether post-training changed any weight of the base."""
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (run_dir, base))
    return any(not torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("behaviour, reward", [("mixture", "outcome"), ("uniform", "outcome"), ("best_of_m", "outcome"),
                                               ("token_best_of_m", "process")])
def test_other_behaviours_run(tmp_path, tiny_base, behaviour, reward):
    run_stage("posttrain", "--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "r"),
              "--algo.behaviour", behaviour, "--reward.name", reward, "--optim.max_steps", "3",
              "--algo.baseline", "rloo", "--algo.group_size", "4", "--algo.kl_coef", "0.1", "--algo.m", "8")
    rows = metrics(tmp_path / "r")
    train = [r for r in rows if "train/reward_mean" in r]
    spent = [b - a for a, b in zip([0] + [r["train/reward_queries"] for r in train], [r["train/reward_queries"] for r in train])]
    B, N, m = 32, 3, 8
    if behaviour in ("mixture", "uniform"):
        assert spent == [B] * 3  # one verdict per response
    elif behaviour == "best_of_m":
        # B verdicts on p_t's samples, then up to m per failure; the tiny base fails on its off-support prompts
        assert all(B < q <= B + B * m for q in spent)
    else:
        assert all(B <= q <= B * N * m for q in spent)  # every checked candidate token is charged
    # the exact KL to q0: zero while the policy is still q0 (the first step's loss pass), positive once it moved
    assert train[0]["train/kl"] == pytest.approx(0, abs=1e-6) and all(r["train/kl"] > 1e-8 for r in train[1:])
    assert rows[-1]["done/steps"] == 3 and moved(tmp_path / "r", tiny_base)


def test_adaptive_step_on_the_linear_model(tmp_path, tiny_linear_base):
    run_stage("posttrain", "--config", CONFIG, "--base", str(tiny_linear_base), "--run.run_dir", str(tmp_path / "a"),
              "--optim.optimizer", "adaptive", "--optim.lr", "1.0", "--optim.max_steps", "3", "--optim.batch_size", "8")
    train = [r for r in metrics(tmp_path / "a") if "train/reward_mean" in r]
    assert len(train) == 3
    # 0/1 rewards without a baseline: a step whose responses all fail has no gradient, every other step has one; the
    # step without signal computes no forward, so its entropy is not logged (null)
    assert all((r["train/grad_norm"] > 0) == (r["train/reward_mean"] > 0) for r in train)
    assert all(r["train/entropy"] > 0 if r["train/reward_mean"] > 0 else r["train/entropy"] is None for r in train)
    assert any(r["train/loss"] != 0 for r in train) and moved(tmp_path / "a", tiny_linear_base)


def test_user_reward_by_import_path(tmp_path, tiny_base):
    run_stage("posttrain", "--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "u"),
              "--reward.name", "tests.user_reward:ParityReward", "--optim.max_steps", "2")
    train = [r for r in metrics(tmp_path / "u") if "train/reward_mean" in r]
    assert [r["train/reward_queries"] for r in train] == [32, 64] and moved(tmp_path / "u", tiny_base)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--reward.name", "outcom"], "unknown reward 'outcom'; available: outcome, process"),
        (["--reward.name", "nowhere.mod:R"], "cannot import module 'nowhere.mod'"),
        (["--base", "runs/does_not_exist"], "no barrierlab checkpoint at 'runs/does_not_exist/model' (config.json and "
                                            "task.json expected); pass a pretraining run folder as base (make pretrain "
                                            "writes runs/base)"),
        (["--algo.behaviour", "token_best_of_m"], "needs a process reward"),
        (["--algo.behaviour", "best_of_m", "--reward.name", "process"], "is a process reward: use token_best_of_m"),
        (["--reward.name", "noisy_process", "--reward.params", "{stop_at_first_error: fasle}"], "must be true or false"),
        (["--algo.baseline", "rloo"], "needs group_size ≥ 2"),
        (["--prompts.clusters", "[7]"], "prompts.clusters"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_base, capsys, args, words):
    """In process (the CLI's exit code and stderr are checked by subprocess in test_config.py)."""
    from posttrain.__main__ import main

    run_dir = tmp_path / "bad"
    with pytest.raises(SystemExit) as info:
        main(["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(run_dir), *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err and err.count("\n") == 1
    assert not run_dir.exists()  # nothing written for bad input


def damaged_copy(tiny_base, tmp_path, file: str):
    """A copy of the tiny base run with one of its files cut to half its length."""
    import shutil

    base = tmp_path / "damaged"
    shutil.copytree(tiny_base, base)
    data = (base / file).read_bytes()
    (base / file).write_bytes(data[: len(data) // 2])
    return base


@pytest.mark.parametrize("file, words", [
    ("model/model.safetensors", "checkpoint '{base}/model' cannot be loaded"),
    ("model/task.json", "checkpoint '{base}/model' cannot be loaded (JSONDecodeError"),
    ("model/tokenizer.json", "checkpoint '{base}/model' cannot be loaded"),
    ("data/eval_prompts/data-00000-of-00001.arrow", "dataset '{base}/data/eval_prompts' cannot be loaded"),
])
def test_a_damaged_base_is_one_line(tmp_path, tiny_base, capsys, file, words):
    from posttrain.__main__ import main

    base = damaged_copy(tiny_base, tmp_path, file)
    err = one_line_error(main, ["--config", CONFIG, "--base", str(base), "--run.run_dir", str(tmp_path / "r")], capsys)
    assert words.format(base=base) in err and not (tmp_path / "r").exists()


def test_a_post_training_run_as_base_names_the_base_to_pass(tmp_path, tiny_base, capsys):
    from posttrain.__main__ import main

    trained = tmp_path / "outcome"
    main(["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(trained), "--optim.max_steps", "1",
          "--run.progress", "false"])
    capsys.readouterr()
    for run in (trained, tmp_path / "unfinished"):  # finished (it has a model/), or killed before its end (none yet)
        if run.name == "unfinished":
            run.mkdir()
            shutil.copy(trained / "config.yaml", run / "config.yaml")
        err = one_line_error(main, ["--config", CONFIG, "--base", str(run), "--run.run_dir", str(tmp_path / "r")], capsys)
        assert err == f"error: base: '{run}' is a post-training run, not a pretraining base; pass the base it was " \
            f"trained from, --base {tiny_base}\n" and not (tmp_path / "r").exists()
    # eval and TRL scripts load a base the same way
    from eval.__main__ import main as evaluate

    err = one_line_error(evaluate, ["--config", "configs/tiny/eval.yaml", "--base", str(trained), "--out_dir",
                                    str(tmp_path / "e")], capsys)
    assert err == f"error: base: '{trained}' is a post-training run, not a pretraining base; pass the base it was " \
        f"trained from, --base {tiny_base}\n" and not (tmp_path / "e").exists()
    from barrierlab.errors import UserError
    from posttrain.for_trl import TRLBase

    with pytest.raises(UserError, match=f"'{trained}' is a post-training run, not a pretraining base"):
        TRLBase.load(trained)


def test_a_task_json_of_another_task_and_an_empty_prompt_dataset_are_one_line(tmp_path, tiny_base, capsys):
    import shutil

    from posttrain.__main__ import main

    base = tmp_path / "edited"
    shutil.copytree(tiny_base, base)
    info = json.loads((base / "model" / "task.json").read_text())
    info["task"]["k"] = 5  # the model's vocabulary holds 3 answers
    (base / "model" / "task.json").write_text(json.dumps(info))
    err = one_line_error(main, ["--config", CONFIG, "--base", str(base), "--run.run_dir", str(tmp_path / "r")], capsys)
    assert f"checkpoint '{base}/model': its task.json (k = 5, d = 6, N = 3) is not the task of its model" in err
    empty = tmp_path / "empty"
    load_dataset_dir(tiny_base / "data" / "eval_prompts", ["prompt_ids"]).filter(lambda row: False).save_to_disk(str(empty))
    err = one_line_error(main, ["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "r"),
                                "--prompts.dataset", str(empty)], capsys)
    assert f"dataset '{empty}' has no rows" in err and not (tmp_path / "r").exists()


def test_a_reward_that_breaks_its_contract_is_refused_before_the_run_folder(tmp_path, tiny_base, capsys):
    from posttrain.__main__ import main
    from posttrain.stage import probe_reward

    err = one_line_error(main, ["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(tmp_path / "r"),
                                "--reward.name", "tests.user_reward:NaNReward"], capsys)
    assert "reward NaNReward: verdicts() returned nan; verdicts are true/false" in err and not (tmp_path / "r").exists()
    # the probe draws none of a noisy verifier's flips
    noisy = lambda: make_reward(RewardConfig(name="noisy_outcome", params={"flip_prob": 0.5}), seed=3)  # noqa: E731
    eval_set = load_dataset_dir(tiny_base / "data" / "eval_prompts", ["prompt_ids", "target_ids"])
    probed, fresh = noisy(), noisy()
    probe_reward(probed, eval_set)
    responses = torch.zeros(64, 3, dtype=torch.long)
    assert torch.equal(probed(None, responses, {"target": responses}).values, fresh(None, responses, {"target": responses}).values)


def test_rerun_of_a_finished_run_changes_nothing_and_a_damaged_checkpoint_is_one_line(tmp_path, tiny_base, capsys):
    from posttrain.__main__ import main

    run_dir = tmp_path / "r"
    args = ["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(run_dir), "--optim.max_steps", "4",
            "--run.checkpoint_every", "2"]
    main(args)
    before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    main(args)
    assert "already finished (max_steps after 4 steps, 128 reward queries); nothing to do" in capsys.readouterr().out
    assert (run_dir / "metrics.jsonl").read_text() == before
    # a killed run's last checkpoint damaged afterwards: resuming says which one, and how to go on
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in before.splitlines() if '"done/' not in line))
    ckpt = run_dir / "checkpoints" / "step_0000004"
    # one checkpointed by two processes (each keeps its own generator states) resumes with two only
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    native = {**state["native"], **{key: state["native"][key] * 2 for key in ("prompt_gen", "sample_gen")}}
    torch.save({**state, "reward": state["reward"] * 2, "native": native}, ckpt / "trainer_state.pt")
    with open(run_dir / "metrics.jsonl", "a") as f:  # a line the kill lost: resuming would drop it
        f.write('{"step": 5, "train/loss": 0.0}\n')
    killed = (run_dir / "metrics.jsonl").read_text()
    err = one_line_error(main, args, capsys)
    assert "was checkpointed by 2 process(es); resume it with that many (torchrun --nproc_per_node 2 -m posttrain ..., " \
        "or accelerate launch --multi_gpu --num_processes 2), not 1" in err
    assert (run_dir / "metrics.jsonl").read_text() == killed  # refused before the lines after the checkpoint go
    torch.save(state, ckpt / "trainer_state.pt")
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 10)
    err = one_line_error(main, args, capsys)
    assert f"checkpoint '{ckpt}' cannot be loaded" in err and "delete that folder" in err
    (run_dir / "model.txt").write_text("not a folder")
    err = one_line_error(main, [*args[:4], "--run.run_dir", str(run_dir / "model.txt")], capsys)
    assert "run.run_dir: '" in err and "is a file, not a folder" in err


@pytest.mark.parametrize("stage", ["pretrain", "posttrain"])
def test_data_parallel_on_two_cpu_processes(tmp_path, tiny_base, stage):
    """torchrun with 2 processes (gloo on CPU): one run folder, global counts, every process's RNG state saved (so a
    killed run of a noisy reward resumes to the uninterrupted run's numbers)."""
    run_dir = tmp_path / "ddp"
    args = (["--config", str(TINY / "pretrain.yaml")] if stage == "pretrain"
            else ["--config", str(TINY / "posttrain_process.yaml"), "--base", str(tiny_base), "--reward.name",
                  "noisy_process", "--reward.params", "{flip_prob: 0.2}"])

    def torchrun(run_dir, *overrides, env=None):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", stage, *args, "--run.run_dir", str(run_dir), *overrides], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                              timeout=300)  # a gloo hang fails, not stalls

    proc = torchrun(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "model" / "model.safetensors").exists()
    rows = metrics(run_dir)
    logged = [r for r in rows if "train/loss" in r]  # every step's line, from one process only
    assert [r["step"] for r in logged] == (list(range(5, 81, 5)) if stage == "pretrain" else list(range(1, 13)))
    assert all(math.isfinite(r["train/loss"]) for r in logged)
    if stage == "posttrain":
        # 36 responses in groups of 4 cannot split into whole groups over 2 processes: refused before anything
        proc = torchrun(tmp_path / "uneven", "--optim.batch_size", "36", "--algo.group_size", "4")
        assert proc.returncode != 0 and "optim.batch_size 36 must be a multiple of algo.group_size × processes " \
            "= 4 × 2 = 8" in proc.stderr and "Traceback" not in proc.stderr.split("error: ")[0]
        assert not (tmp_path / "uneven").exists()
        # a folder refused by its place: each process says so in its own line (none waits for the other in vain)
        proc = torchrun(run_dir / "inside")
        assert proc.returncode != 0 and proc.stderr.count(f"is inside the run folder '{run_dir}'") == 2
        # a run that stopped before its first step gives way; the second process waits until the first has cleared it
        failed = tmp_path / "failed"
        failed.mkdir()
        shutil.copy(run_dir / "config.yaml", failed / "config.yaml")
        (failed / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
        proc = torchrun(failed, "--optim.batch_size", "64", "--optim.max_steps", "2")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.count("started over there") == 1 and metrics(failed)[-1]["done/steps"] == 2
        assert sum("done/steps" in r for r in rows) == 1
        assert [r for r in rows if "train/samples" in r][-1]["train/samples"] == 12 * 32  # the global batch
        state = torch.load(run_dir / "checkpoints" / "step_0000012" / "trainer_state.pt", weights_only=True)
        assert len(state["native"]["sample_gen"]) == len(state["reward"]) == 2
        killed = torchrun(tmp_path / "resumed", env={"BARRIERLAB_KILL_AFTER_STEP": "7"})  # after the step-5 checkpoint
        assert killed.returncode != 0 and torchrun(tmp_path / "resumed").returncode == 0
        assert metrics(tmp_path / "resumed", timings=False) == metrics(run_dir, timings=False)
        assert load_file(tmp_path / "resumed" / "model" / "model.safetensors").keys() and all(
            torch.equal(v, load_file(run_dir / "model" / "model.safetensors")[k])
            for k, v in load_file(tmp_path / "resumed" / "model" / "model.safetensors").items())


def test_prompts_drawn_from_a_saved_dataset_keep_their_columns(tiny_base, tmp_path):
    from datasets import Dataset

    from barrierlab.config import load_config
    from barrierlab.errors import UserError
    from barrierlab.loading import column_tensor, load_dataset_dir
    from barrierlab.tasks import task_from_info
    from barrierlab.tokenizer import ANSWER0
    from posttrain.config import PosttrainConfig
    from posttrain.prompts import PromptSource

    task = task_from_info(json.loads((tiny_base / "model" / "task.json").read_text()))
    path = tiny_base / "data" / "eval_prompts"

    def source(dataset, *args):
        cfg = load_config(PosttrainConfig, ["--config", CONFIG, "--prompts.dataset", str(dataset), *args])
        return PromptSource(task, torch.Generator().manual_seed(0), cfg.prompts.clusters, cfg.prompts.dataset)

    rows = load_dataset_dir(path, ["prompt_ids", "target_ids", "cluster"])
    saved = {tuple(p.tolist()): (t - ANSWER0, c) for p, t, c in
             zip(column_tensor(rows, "prompt_ids"), column_tensor(rows, "target_ids"), column_tensor(rows, "cluster"))}
    prompts, columns = source(path).draw(200)
    assert len({tuple(p.tolist()) for p in prompts}) > len(saved) / 2  # draws spread over the saved rows
    for p, target, cluster in zip(prompts, columns["target"], columns["cluster"]):
        want_target, want_cluster = saved[tuple(p.tolist())]
        assert torch.equal(target, want_target) and cluster == want_cluster
    # prompts.clusters selects the dataset's rows of those clusters
    assert set(source(path, "--prompts.clusters", "[0, 2]").draw(200)[1]["cluster"].tolist()) == {0, 2}
    # a dataset of another task (responses of another N) is refused in one line
    other, bare = tmp_path / "other", tmp_path / "bare"
    Dataset.from_dict({"prompt_ids": rows["prompt_ids"], "target_ids": [t + t for t in rows["target_ids"]]}).save_to_disk(other)
    with pytest.raises(UserError, match=f"prompts.dataset '{other}' is not of the base's task"):
        source(other)
    Dataset.from_dict({"prompt_ids": rows["prompt_ids"], "target_ids": rows["target_ids"]}).save_to_disk(bare)
    with pytest.raises(UserError, match="has no cluster column to select by"):
        source(bare, "--prompts.clusters", "[0]")


def test_sgd_clipping_log_every_and_threshold_do_what_they_say(tmp_path, tiny_base):
    from posttrain.__main__ import main

    run_dir, lr, clip = tmp_path / "r", 0.05, 1e-3
    main(["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(run_dir), "--reward.signed", "true",
          "--optim.optimizer", "sgd", "--optim.lr", str(lr), "--optim.grad_clip", str(clip), "--optim.max_steps", "4",
          "--eval.log_every", "2", "--eval.offsupport_threshold", "0.5", "--run.progress", "false"])
    rows = metrics(run_dir)
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4] and all(r["train/grad_norm"] > 10 * clip for r in train)  # clipped
    # SGD on the clipped gradient: each step moves the weights by exactly lr · clip
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (tiny_base, run_dir))
    moved_by = sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in a) ** 0.5
    assert 0 < moved_by <= 4 * lr * clip * (1 + 1e-4)
    # the base model's evaluation, split at the given threshold instead of the base run's
    alpha = torch.tensor(load_dataset_dir(tiny_base / "data" / "eval_prompts", ["base_alpha"])["base_alpha"], dtype=torch.float64)
    assert rows[0]["eval/offsupport_likelihood"] == pytest.approx(alpha[alpha < 0.5].mean().item(), rel=1e-5)
    assert rows[0]["eval/onsupport_likelihood"] == pytest.approx(alpha[alpha >= 0.5].mean().item(), rel=1e-5)
