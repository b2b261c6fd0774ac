"""Stage 2: post-train a base model with outcome or process rewards by policy gradient.

    python -m posttrain --config configs/posttrain_outcome.yaml [--reward.name process] ...

Each step: fresh prompts → a behaviour policy samples responses → the reward model scores them (reward
queries are counted) → advantages → one policy-gradient step on ``-Σ_i A_i log p(y_i | x, y_<i)``.
Every ``eval_every`` steps the likelihood of y* on the base run's eval prompts is computed exactly.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from barrierlab.errors import UserError, cli_entry
from barrierlab.loading import (
    BASE_EXPECTED,
    check_same_base,
    column_tensor,
    load_dataset_dir,
    load_model_dir,
    model_fingerprint,
    prompt_tensors,
    save_model_dir,
)
from barrierlab.policy import ResponseLogits
from barrierlab.rundir import RunDir, last_row
from barrierlab.tasks import task_from_info
from barrierlab.tokenizer import answer_ids
from barrierlab.training import (
    fault_point,
    leave_process_group,
    make_accelerator,
    seed_everything,
    stop_if_diverged,
    synchronize,
)
from posttrain.advantages import advantages
from posttrain.behaviour import Sampler, StepBatches, collect
from posttrain.config import PosttrainConfig, load_posttrain_config
from posttrain.discovery import Discovery
from posttrain.evaluation import ExactEval, due_for_eval, log_finish, stop_reason, support_postfix, train_metrics
from posttrain.loss import adaptive_gradient, policy_gradient_loss
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


def make_optimizer(cfg: PosttrainConfig, model):
    o = cfg.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr)
    if o.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=o.lr)
    return torch.optim.SGD(model.parameters(), lr=o.lr)  # sgd, and the adaptive step (its η is in the gradient)


def has_signal(acc, adv: torch.Tensor, kl_coef: float) -> bool:
    """Whether this step has anything to learn on any process: a non-zero advantage, or a KL term."""
    local = torch.tensor(float(kl_coef > 0 or bool((adv != 0).any())), device=adv.device)
    return bool(acc.reduce(local, "sum") > 0) if acc.num_processes > 1 else bool(local)


def zero_gradients(module: torch.nn.Module) -> None:
    """A step without signal: every advantage is 0, so the loss Σ A_i log p has gradient exactly 0 (and clipping a zero
    gradient leaves it 0). Setting the gradients to 0 and letting the optimiser step is then the full step, bit for
    bit, for every optimiser (Adam's and Adagrad's moments and step counts advance as they would; an ``adaptive``
    or SGD step adds 0), without the forward and backward that would compute those zeros."""
    for p in module.parameters():
        p.grad = torch.zeros_like(p)


def reduce_min(t: torch.Tensor, device) -> torch.Tensor:
    """Elementwise minimum of ``t`` over processes."""
    t = t.to(device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return t.cpu()


@cli_entry
def main(argv):
    cfg = load_posttrain_config(argv)
    acc = make_accelerator(cfg.run)
    reward = run_reward(cfg, acc.process_index)
    check_pairing(cfg, reward)
    base_dir = Path(cfg.base)
    model, tokenizer, task_info = load_model_dir(base_dir / "model", BASE_EXPECTED)
    eval_set = load_dataset_dir(base_dir / "data" / "eval_prompts", ["prompt_ids", "target_ids", "base_alpha"])
    probe_reward(reward, eval_set)
    task = task_from_info(task_info)
    k, N = task.k, task.N
    needs_base = cfg.backend == "native" and (
        cfg.algo.behaviour in ("mixture", "best_of_m", "token_best_of_m") or cfg.algo.kl_coef > 0)
    base = load_model_dir(base_dir / "model")[0].to(acc.device).eval() if needs_base else None
    threshold = cfg.eval.offsupport_threshold or task_info["offsupport_threshold"]
    files = {"task.json": (base_dir / "model" / "task.json").read_text()}  # in every model folder the run writes
    base_id = model_fingerprint(base_dir / "model")  # in every checkpoint: a resume from another base is refused

    rank, world = acc.process_index, acc.num_processes
    if cfg.optim.optimizer == "adaptive" and world > 1:
        raise UserError("optim.optimizer 'adaptive' computes per-response gradients on one process; use adam/adagrad/sgd with several")
    if cfg.backend == "trl":
        from posttrain.trl_backend import check_supported, run_trl  # TRL is imported only when asked for

        check_supported(cfg, model, world)
    G = cfg.algo.group_size
    if cfg.optim.batch_size % (G * world):  # each process draws whole groups, the same number as the others
        raise UserError(f"optim.batch_size {cfg.optim.batch_size} must be a multiple of algo.group_size × processes "
                        f"= {G} × {world} = {G * world}")
    prompt_gen = torch.Generator().manual_seed(cfg.run.seed * 7919 + rank)
    sample_gen = torch.Generator(device=acc.device).manual_seed(cfg.run.seed * 104729 + rank)
    prompts_source = PromptSource(task, prompt_gen, cfg.prompts.clusters, cfg.prompts.dataset)
    # validation is done: only now write anything
    run = RunDir(cfg, cfg.run, is_main=acc.is_main_process, wait_for_main=acc.wait_for_everyone)
    done = last_row(run.path, "done/steps")
    if done is not None:
        acc.print(f"{run.path} already finished ({done['done/stop_reason']} after {done['done/steps']} steps, "
                  f"{done['done/reward_queries']} reward queries); nothing to do")
        return
    seed_everything(cfg.run.seed)
    if cfg.backend == "trl":
        run_trl(cfg, model=model, tokenizer=tokenizer, reward=reward, task=task, files=files, base_id=base_id,
                eval_set=eval_set, threshold=threshold, run=run, prompts_source=prompts_source)
        return
    optimizer = make_optimizer(cfg, model)
    evaluator = ExactEval(eval_set, threshold, cfg.eval.num_tracked, k, acc.device, cfg.prompts.clusters)

    step, queries, samples, wall_before, stop = 0, 0, 0, 0.0, None
    at_rest, signalled, moved = True, False, False  # the policy unchanged by the last step; by any step; since the last evaluation
    # a zero-gradient step of Adagrad (lr_decay 0), SGD (no momentum) or the adaptive step changes no weight and no state
    # a later step reads, so a step without signal skips it; Adam's moments would move the weights
    memoryless = cfg.optim.optimizer != "adam"
    discovery = Discovery(N)
    started = time.time()

    def same_run(state: dict) -> None:  # the same base; each process resumes its own prompt, sampling and noise streams
        check_same_base(state["base_fingerprint"], base_id, cfg.base, run.path)
        n = len(state["prompt_gen"])
        if n != world:
            raise UserError(f"{run.path} was checkpointed by {n} process(es); resume it with that many (torchrun "
                            f"--nproc_per_node {n} -m posttrain ..., or accelerate launch --multi_gpu --num_processes {n}), "
                            f"not {world}")

    state = run.resume(model, optimizer, check=same_run)
    if state is not None:
        step, queries, samples, stop = state["step"], state["queries"], state["samples"], state["stop_reason"]
        wall_before = state["wall_time_s"]
        prompt_gen.set_state(state["prompt_gen"][rank])
        sample_gen.set_state(state["sample_gen"][rank])
        reward.load_state_dict(state["reward"][rank])
        discovery.load_state_dict(state["discovery"])
        at_rest, signalled, moved = state["at_rest"], state["signalled"], True
        acc.print(f"resuming {run.path} from step {step} ({queries} reward queries spent)")
    learner, optimizer = acc.prepare(ResponseLogits(model, answer_ids(k)), optimizer)
    policy = acc.unwrap_model(learner).model
    sampler = Sampler(policy, base, reward, k, N, cfg.algo.temperature, cfg.algo.mixture_weight, cfg.algo.m, sample_gen)
    per_rank = cfg.optim.batch_size // world
    batches = StepBatches(cfg.algo.behaviour, sampler, prompts_source, per_rank // G, G, acc.device,
                          ahead=max(1, cfg.algo.sample_ahead // per_rank))
    if state is not None:
        batches.load_state_dict(state["batches"][rank])

    def checkpoint_state():
        # every process's generator states (a collective: all processes must call this)
        gather = (lambda t: [t]) if world == 1 else (lambda t: gather_object([t]))
        return {"step": step, "queries": queries, "samples": samples, "optimizer": optimizer.state_dict(), "base_fingerprint": base_id,
                "wall_time_s": wall_before + time.time() - started,
                "prompt_gen": gather(prompt_gen.get_state()), "sample_gen": gather(sample_gen.get_state()),
                "reward": gather(reward.state_dict()), "discovery": discovery.state_dict(), "at_rest": at_rest, "signalled": signalled,
                "batches": gather(batches.state_dict()), "stop_reason": stop}

    def evaluate() -> dict:
        metrics = evaluator(policy)
        metrics.update({"train/reward_queries": queries, "train/samples": samples})
        run.log(step, metrics)
        return metrics

    # with a query budget the bar counts reward queries (the resource that ends the run), else steps
    by_queries = cfg.optim.max_queries is not None
    bar = tqdm(total=cfg.optim.max_queries if by_queries else cfg.optim.max_steps, initial=queries if by_queries else step,
               unit=" queries" if by_queries else " steps", unit_scale=by_queries, desc=f"posttrain[{cfg.reward.name}]",
               disable=not (cfg.run.progress and acc.is_main_process), mininterval=1.0)
    if state is None:
        last = evaluate()  # step 0: the base model
    else:  # resumed: the latest evaluation is in the metrics kept (a run killed at its end has it at this step)
        last = last_row(run.path, "eval/likelihood", upto=step)
    policy.eval()  # in train mode only for the update
    while stop is None and step < cfg.optim.max_steps:
        tick = time.perf_counter()
        prompts, columns, responses = batches.next(at_rest)
        rollout = collect(cfg.algo.behaviour, sampler, prompts, columns, responses)
        step_queries = int(acc.reduce(torch.tensor(rollout.queries, device=acc.device), "sum"))
        discovery.update(rollout.responses, columns["target"], rollout.mask, queries, step_queries,
                         rollout.one_per_row and world == 1)
        adv = advantages(rollout.rewards, cfg.algo.baseline, G, cfg.algo.scale_std, rollout.mask, acc.reduce)
        signal = has_signal(acc, adv, cfg.algo.kl_coef)
        at_rest = not signal and (memoryless or not signalled)  # Adam's moments move it after a signal
        signalled, moved = signalled or signal, moved or not at_rest
        if not signal:
            loss, stats, grad_norm = torch.zeros((), device=acc.device), {"entropy": None}, 0.0
            if not memoryless:  # Adam's moments and step count advance as the full step would move them
                zero_gradients(learner)
                optimizer.step()
        else:
            policy.train()
            if cfg.optim.optimizer == "adaptive":
                grad_norm = adaptive_gradient(learner, rollout, adv)
                with torch.no_grad():  # the logged loss and entropy, as for the other optimisers; the step is the adaptive one
                    loss, stats = policy_gradient_loss(learner, rollout, adv, k, base, cfg.algo.kl_coef)
            else:
                with acc.autocast():
                    loss, stats = policy_gradient_loss(learner, rollout, adv, k, base, cfg.algo.kl_coef)
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(learner.parameters(), cfg.optim.grad_clip or math.inf)
            optimizer.step()
            policy.eval()
        optimizer.zero_grad(set_to_none=True)
        synchronize(acc.device)
        update_time = time.perf_counter() - tick  # sampling, rewards and the update; not evaluation

        stop_if_diverged(step + 1, "optim.lr", **{"train/grad_norm": float(grad_norm)})  # a nan loss has a nan gradient
        queries += step_queries
        samples += per_rank * world
        step += 1
        bar.update(step_queries if by_queries else 1)
        if step % cfg.eval.log_every == 0:
            mean = lambda t: acc.reduce(t.detach().float(), "mean").item()  # noqa: E731  (over processes)
            reward_mean = (rollout.rewards * rollout.mask).sum() / rollout.mask.sum().clamp_min(1)
            run.log(step, train_metrics(queries=queries, samples=samples, reward_mean=mean(reward_mean),
                                        success_rate=mean(rollout.success.float().mean()), loss=mean(loss),
                                        grad_norm=float(grad_norm), update_time_s=update_time,
                                        **{name: None if v is None else mean(v) for name, v in stats.items()}))
        if world > 1 and discovery.success is None:
            discovery.sync(lambda t: reduce_min(t, acc.device))
        if discovery.new:
            run.log(step, discovery.pop_new())
        if due_for_eval(cfg, step, queries, moved):
            last, moved = evaluate(), False
            bar.set_postfix(step=step, **support_postfix(last))
        stop = stop_reason(cfg, step, queries, last, evaluator)  # decided before the checkpoint, which keeps it
        if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
            run.save_checkpoint(step, policy, tokenizer, checkpoint_state(), files)
        fault_point(step)
    bar.close()
    stop_if_diverged(step, "optim.lr", model=policy)  # the last update's weights, before they are saved as the result
    state = checkpoint_state()
    if acc.is_main_process:
        save_model_dir(run.path / "model", policy, tokenizer, files)
        run.save_checkpoint(step, policy, tokenizer, state, files)
        log_finish(run, step=step, reason=stop or "max_steps", queries=queries, wall_time_s=wall_before + time.time() - started,
                   device=acc.device, processes=world, last=last, discovery=discovery)
    run.close()
    learner = optimizer = None  # the DDP wrapper goes before the process group does (see leave_process_group)
    leave_process_group(acc)


if __name__ == "__main__":
    main()
