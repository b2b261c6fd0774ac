"""The post-training stage's run (what it does: ``posttrain.__main__``), once ``python -m posttrain`` has loaded its
config: the checks that need the base and the reward model, then the loop of the chosen backend."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from barrierlab.errors import UserError
from barrierlab.loading import column_tensor, load_base, load_dataset_dir, model_fingerprint, prompt_tensors
from barrierlab.rundir import RunDir, last_row
from barrierlab.tasks import task_from_info
from barrierlab.training import make_accelerator
from posttrain.bookkeeping import Bookkeeper
from posttrain.config import PosttrainConfig
from posttrain.evaluation import ExactEval
from posttrain.prompts import PromptSource
from rewards import make_reward


def run_reward(cfg: PosttrainConfig, rank: int = 0):
    """The run's reward model. Its noise seed, unless reward.params sets one, comes from run.seed but is not the seed
    of any other generator (the global one TRL samples with, the prompts', the sampler's): its flips stay independent."""
    return make_reward(cfg.reward, seed=cfg.run.seed * 15485863 + 1, rank=rank)


def check_pairing(cfg: PosttrainConfig, reward) -> None:
    behaviour = cfg.algo.behaviour
    if behaviour == "best_of_m" and reward.granularity != "outcome":
        raise UserError("algo.behaviour 'best_of_m' (Algorithm 1) explores with an outcome reward; "
                        f"reward '{cfg.reward.name}' is a process reward: use token_best_of_m")
    if behaviour == "token_best_of_m" and reward.granularity != "process":
        raise UserError("algo.behaviour 'token_best_of_m' (Algorithm 2) needs a process reward; "
                        f"reward '{cfg.reward.name}' is an outcome reward: use best_of_m")


def probe_reward(reward, eval_set) -> None:
    """Score two eval prompts' correct responses before anything is written: a reward model that breaks its contract
    fails here in one line, not after the run folder holds a run of its name. Its state is put back, so the probe
    draws none of a noisy verifier's flips."""
    state = copy.deepcopy(reward.state_dict())
    rows = eval_set.select(range(min(2, len(eval_set))))
    prompts, targets = prompt_tensors(rows)
    columns = {"target": targets, **({"cluster": column_tensor(rows, "cluster")} if "cluster" in rows.column_names else {})}
    reward(prompts, targets, columns)
    reward.load_state_dict(state)


def check_batch(cfg: PosttrainConfig, processes: int) -> None:
    G = cfg.algo.group_size
    if cfg.optim.batch_size % (G * processes):  # each process draws whole groups, the same number as the others
        raise UserError(f"optim.batch_size {cfg.optim.batch_size} must be a multiple of algo.group_size × processes "
                        f"= {G} × {processes} = {G * processes}")


def run_posttrain(cfg: PosttrainConfig) -> None:
    if cfg.backend == "trl":  # TRL is imported only when asked for
        from posttrain.trl_backend import check_supported
        from posttrain.trl_backend import run_trl as train
    else:
        from posttrain.native import check_supported
        from posttrain.native import run_native as train
    acc = make_accelerator(cfg.run)
    reward = run_reward(cfg, acc.process_index)
    check_pairing(cfg, reward)
    base = Path(cfg.base)
    model, tokenizer, task_info = load_base(base)  # a post-training run as base is refused, naming its base
    reward.check_task(task_info)  # a learned reward of another task is refused here
    eval_set = load_dataset_dir(base / "data" / "eval_prompts", ["target_ids", "base_alpha"])
    probe_reward(reward, eval_set)
    task = task_from_info(task_info)
    check_supported(cfg, model, acc.num_processes)
    check_batch(cfg, acc.num_processes)
    # each process its own prompt stream; PromptSource checks prompts.clusters and prompts.dataset
    prompt_gen = torch.Generator().manual_seed(cfg.run.seed * 7919 + acc.process_index)
    prompts = PromptSource(task, prompt_gen, cfg.prompts.clusters, cfg.prompts.dataset)

    # validation is done: only now write anything
    run = RunDir(cfg, cfg.run, acc)
    done = last_row(run.path, "done/steps")
    if done is not None:  # a done/ row marks a finished run: its rerun leaves it as it is
        acc.print(f"{run.path} already finished ({done['done/stop_reason']} after {done['done/steps']} steps, "
                  f"{done['done/reward_queries']} reward queries); nothing to do")
        return
    threshold = cfg.eval.offsupport_threshold or task_info["offsupport_threshold"]
    tracked_dir = base / "data" / "tracked_prompts"
    tracked = load_dataset_dir(tracked_dir, ["target_ids"]) if tracked_dir.exists() else None
    evaluator = ExactEval(eval_set, threshold, cfg.eval.num_tracked, task.k, acc.device, cfg.prompts.clusters, tracked)
    base_id = model_fingerprint(base / "model")  # in every checkpoint: a resume from another base is refused
    # in every model folder it writes: its task, and its base (eval refuses the folder against another, wherever it is)
    files = {"task.json": (base / "model" / "task.json").read_text(),
             "base.json": json.dumps({"fingerprint": base_id, "path": str(base)}) + "\n"}
    books = Bookkeeper(cfg, run, evaluator, N=task.N, processes=acc.num_processes, is_main=acc.is_main_process,
                       base_id=base_id, files=files, label_queries=reward.label_queries)
    train(cfg, books, acc=acc, model=model, tokenizer=tokenizer, task=task, reward=reward, prompts=prompts)
