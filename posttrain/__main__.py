"""Stage 2: post-train a base model with outcome or process rewards by policy gradient.

    python -m posttrain --config configs/posttrain_outcome.yaml [--reward.name process] ...

Each step: fresh prompts → a behaviour policy samples responses → the reward model scores them (reward
queries are counted) → advantages → one policy-gradient step on ``-Σ_i A_i log p(y_i | x, y_<i)``.
Every ``eval_every`` steps the likelihood of y* on the base run's eval prompts is computed exactly.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from barrierlab.errors import UserError, cli_entry
from barrierlab.policy import ResponseLogits, answer_logits
from barrierlab.run import (
    RunDir,
    column_tensor,
    fault_point,
    last_row,
    load_dataset_dir,
    load_model_dir,
    make_accelerator,
    save_model_dir,
    seed_everything,
    synchronize,
)
from barrierlab.tasks import task_from_info
from barrierlab.tokenizer import ANSWER0, answer_ids, prompt_ids
from posttrain.advantages import advantages
from posttrain.behaviour import Sampler, collect
from posttrain.config import PosttrainConfig, load_posttrain_config
from posttrain.evaluation import ExactEval, log_finish, stop_reason, support_postfix
from rewards import make_reward


class PromptSource:
    """Fresh prompts from the task distribution, or rows of a saved prompt dataset."""

    def __init__(self, cfg: PosttrainConfig, task, generator: torch.Generator):
        self.task, self.generator = task, generator
        self.clusters = cfg.prompts.clusters
        if self.clusters is not None:
            bad = [c for c in self.clusters if not 0 <= c < task.num_clusters]
            if bad or not self.clusters:
                raise UserError(f"prompts.clusters: {bad or 'empty list'} not in 0..{task.num_clusters - 1}")
        self.dataset = None
        if cfg.prompts.dataset:
            self.dataset = prompt_rows(cfg.prompts.dataset, task, self.clusters)

    def draw(self, n: int) -> tuple[torch.Tensor, dict]:
        if self.dataset is not None:
            prompts, targets, clusters = self.dataset
            rows = torch.randint(0, prompts.shape[0], (n,), generator=self.generator)
            cols = {"target": targets[rows]}
            if clusters is not None:
                cols["cluster"] = clusters[rows]
            return prompts[rows], cols
        chosen = None
        if self.clusters is not None:
            pool = torch.tensor(self.clusters)
            chosen = pool[torch.randint(0, pool.numel(), (n,), generator=self.generator)]
        bits, clusters = self.task.sample_prompts(n, self.generator, clusters=chosen)
        return prompt_ids(bits), {"target": self.task.targets(bits, clusters), "cluster": clusters}


def prompt_rows(path: str, task, clusters: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(prompt ids, target symbols, clusters or None) of a saved prompt dataset, checked against the base's task
    and restricted to ``clusters`` if given."""
    ds = load_dataset_dir(Path(path), ["prompt_ids", "target_ids"])
    prompts, targets = column_tensor(ds, "prompt_ids"), column_tensor(ds, "target_ids") - ANSWER0
    if (prompts.dim(), targets.dim()) != (2, 2) or prompts.shape[1] != task.d + 2 or targets.shape[1] != task.N or \
            not ((targets >= 0) & (targets < task.k)).all():
        raise UserError(f"prompts.dataset '{path}' is not of the base's task (prompts of d + 2 = {task.d + 2} tokens, "
                        f"responses of N = {task.N} answers among k = {task.k}); use the eval_prompts of this base")
    cluster = column_tensor(ds, "cluster") if "cluster" in ds.column_names else None
    if clusters is not None:
        if cluster is None:
            raise UserError(f"prompts.clusters: '{path}' has no cluster column to select by; leave prompts.clusters out")
        keep = torch.isin(cluster, torch.tensor(clusters))
        if not keep.any():
            raise UserError(f"prompts.clusters: '{path}' has no rows of clusters {clusters}")
        prompts, targets, cluster = prompts[keep], targets[keep], cluster[keep]
    return prompts, targets, cluster


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


def _entropy(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed entropy of the policy over the unmasked positions."""
    return (-(logp.exp() * logp).sum(-1) * mask).sum()


def policy_gradient_loss(learner, rollout, adv, k, base=None, kl_coef=0.0):
    """``-Σ_i A_i log p(y_i | x, y_<i)`` averaged over responses, plus the exact KL to q0 if asked.
    ``learner`` is the (possibly DDP-wrapped) ``ResponseLogits`` of the policy over the k answers.

    A response whose advantages are all zero adds nothing to the loss or its gradient (outcome PG with 0/1
    rewards: every failure), so without a KL term only the others go through the graph; the logged entropy
    still covers every response, through a forward without grad."""
    B = adv.shape[0]
    learn = (adv != 0).any(-1) if kl_coef == 0 else torch.ones(B, dtype=torch.bool, device=adv.device)
    learn[0] |= ~learn.any()  # one row at least: under DDP every process must run its backward
    prompts, responses, mask = rollout.prompts[learn], rollout.responses[learn], rollout.mask[learn]
    logp = torch.log_softmax(learner(prompts, responses), -1)
    token_logp = logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    loss = -(adv[learn] * token_logp).sum() / B
    entropy = _entropy(logp.detach(), mask)
    if not learn.all():
        # through the bare module: a DDP forward may broadcast buffers, and the processes' counts must match
        bare = getattr(learner, "module", learner)
        with torch.no_grad():
            rest = ~learn
            rest_logp = torch.log_softmax(bare(rollout.prompts[rest], rollout.responses[rest]), -1)
            entropy = entropy + _entropy(rest_logp, rollout.mask[rest])
    stats = {"entropy": entropy / rollout.mask.sum().clamp_min(1)}
    if kl_coef > 0:
        with torch.no_grad():
            base_logp = torch.log_softmax(answer_logits(base, prompts, responses, k), -1)
        kl = ((logp.exp() * (logp - base_logp)).sum(-1) * mask).sum(-1).mean()
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    return loss, stats


def adaptive_gradient(learner, rollout, adv) -> torch.Tensor:
    """Set ``.grad`` to ``-mean_b η_b ∇ Σ_i A_bi log p(y_bi)`` with the theory's ``η_b = 1/(4 + 2‖∇ log p(y_b|x_b)‖²)``.

    One backward pair per response (per-sample gradient norms): meant for the linear model and small batches.
    """
    params = [p for p in learner.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    B = rollout.responses.shape[0]
    for b in (adv != 0).any(-1).nonzero().flatten().tolist():  # a response without signal adds η_b · 0
        lp = learner(rollout.prompts[b : b + 1], rollout.responses[b : b + 1]).log_softmax(-1)
        lp = lp.gather(-1, rollout.responses[b : b + 1].unsqueeze(-1)).squeeze(-1)[0] * rollout.mask[b]
        grad_seq = torch.autograd.grad(lp.sum(), params, retain_graph=True, allow_unused=True)
        grad_adv = torch.autograd.grad((adv[b] * lp).sum(), params, allow_unused=True)
        sq = sum(float(g.pow(2).sum()) for g in grad_seq if g is not None)
        eta = 1.0 / (4.0 + 2.0 * sq)
        for t, g in zip(total, grad_adv):
            if g is not None:
                t.add_(g, alpha=eta / B)
    for p, t in zip(params, total):
        p.grad = -t
    return sum(float(t.pow(2).sum()) for t in total) ** 0.5


def make_optimizer(cfg: PosttrainConfig, model):
    o = cfg.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr)
    if o.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=o.lr)
    return torch.optim.SGD(model.parameters(), lr=o.lr)  # sgd, and the adaptive step (its η is in the gradient)


@cli_entry
def main(argv):
    cfg = load_posttrain_config(argv)
    acc = make_accelerator(cfg.run)
    reward = run_reward(cfg, acc.process_index)
    check_pairing(cfg, reward)
    base_dir = Path(cfg.base)
    model, tokenizer, task_info = load_model_dir(base_dir / "model")
    eval_set = load_dataset_dir(base_dir / "data" / "eval_prompts", ["prompt_ids", "target_ids", "base_alpha"])
    if cfg.optim.optimizer == "adaptive" and acc.num_processes > 1:
        raise UserError("optim.optimizer 'adaptive' computes per-response gradients on one process; use adam/adagrad/sgd with several")
    task = task_from_info(task_info)
    k, N = task.k, task.N
    needs_base = cfg.backend == "native" and (
        cfg.algo.behaviour in ("mixture", "best_of_m", "token_best_of_m") or cfg.algo.kl_coef > 0)
    base = load_model_dir(base_dir / "model")[0].to(acc.device).eval() if needs_base else None
    threshold = cfg.eval.offsupport_threshold or task_info["offsupport_threshold"]

    rank, world = acc.process_index, acc.num_processes
    prompt_gen = torch.Generator().manual_seed(cfg.run.seed * 7919 + rank)
    sample_gen = torch.Generator(device=acc.device).manual_seed(cfg.run.seed * 104729 + rank)
    prompts_source = PromptSource(cfg, task, prompt_gen)
    run = RunDir(cfg, cfg.run, is_main=acc.is_main_process)  # validation is done: only now write anything
    done = last_row(run.path, "done/steps")
    if done is not None:
        acc.print(f"{run.path} already finished ({done['done/stop_reason']} after {done['done/steps']} steps, "
                  f"{done['done/reward_queries']} reward queries); nothing to do")
        return
    seed_everything(cfg.run.seed)
    if cfg.backend == "trl":
        from posttrain.trl_backend import run_trl  # TRL is imported only when asked for

        run_trl(cfg, model=model, tokenizer=tokenizer, reward=reward, task=task, base_dir=base_dir,
                eval_set=eval_set, threshold=threshold, run=run, prompts_source=prompts_source)
        return
    optimizer = make_optimizer(cfg, model)
    evaluator = ExactEval(eval_set, threshold, cfg.eval.num_tracked, k, acc.device, cfg.prompts.clusters)

    step, queries, samples, wall_before, stop = 0, 0, 0, 0.0, None
    started = time.time()
    state = run.resume(model, optimizer)
    if state is not None:
        step, queries, samples, stop = state["step"], state["queries"], state["samples"], state.get("stop_reason")
        wall_before = state["wall_time_s"]
        if len(state["prompt_gen"]) != world:  # each process resumes its own prompt and sampling streams
            raise UserError(f"{run.path} was checkpointed by {len(state['prompt_gen'])} process(es); resume it with "
                            f"that many (accelerate launch --num_processes {len(state['prompt_gen'])}), not {world}")
        prompt_gen.set_state(state["prompt_gen"][rank])
        sample_gen.set_state(state["sample_gen"][rank])
        reward.load_state_dict(state["reward"])
        acc.print(f"resuming {run.path} from step {step} ({queries} reward queries spent)")
    learner, optimizer = acc.prepare(ResponseLogits(model, answer_ids(k)), optimizer)
    policy = acc.unwrap_model(learner).model
    sampler = Sampler(policy, base, reward, k, N, cfg.algo.temperature, cfg.algo.mixture_weight, cfg.algo.m, sample_gen)

    def checkpoint_state():
        # every process's generator states (a collective: all processes must call this)
        gather = (lambda t: [t]) if world == 1 else (lambda t: gather_object([t]))
        return {"step": step, "queries": queries, "samples": samples, "optimizer": optimizer.state_dict(),
                "wall_time_s": wall_before + time.time() - started,
                "prompt_gen": gather(prompt_gen.get_state()), "sample_gen": gather(sample_gen.get_state()),
                "reward": reward.state_dict(), "stop_reason": stop}

    evaluated_at = -1

    def evaluate() -> dict:
        nonlocal evaluated_at
        evaluated_at = step
        policy.eval()
        metrics = evaluator(policy)
        metrics.update({"train/reward_queries": queries, "train/samples": samples})
        run.log(step, metrics)
        policy.train()
        return metrics

    G, per_rank = cfg.algo.group_size, cfg.optim.batch_size // world
    # with a query budget the bar counts reward queries (the resource that ends the run), else steps
    by_queries = cfg.optim.max_queries is not None
    bar = tqdm(total=cfg.optim.max_queries if by_queries else cfg.optim.max_steps, initial=queries if by_queries else step,
               unit=" queries" if by_queries else " steps", unit_scale=by_queries, desc=f"posttrain[{cfg.reward.name}]",
               disable=not (cfg.run.progress and acc.is_main_process), mininterval=1.0)
    if state is None:
        last = evaluate()  # step 0: the base model
    else:  # resumed: the latest evaluation is in the metrics kept (a run killed at its end has it at this step)
        last = last_row(run.path, "eval/likelihood", upto=step)
        evaluated_at = last["step"] if last else -1
    model.train()
    while stop is None and step < cfg.optim.max_steps:
        tick = time.perf_counter()
        prompts, columns = prompts_source.draw(per_rank // G)
        prompts = prompts.repeat_interleave(G, 0).to(acc.device)
        columns = {key: v.repeat_interleave(G, 0).to(acc.device) for key, v in columns.items()}
        policy.eval()
        rollout = collect(cfg.algo.behaviour, sampler, prompts, columns)
        policy.train()
        adv = advantages(rollout.rewards, cfg.algo.baseline, G, cfg.algo.scale_std, rollout.mask)
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
        optimizer.zero_grad(set_to_none=True)
        synchronize(acc.device)
        update_time = time.perf_counter() - tick  # sampling, rewards and the update; not evaluation

        step_queries = int(acc.reduce(torch.tensor(rollout.queries, device=acc.device), "sum"))
        queries += step_queries
        samples += per_rank * world
        step += 1
        bar.update(step_queries if by_queries else 1)
        if step % cfg.eval.log_every == 0:
            reward_sum = (rollout.rewards * rollout.mask).sum() / rollout.mask.sum().clamp_min(1)
            metrics = {
                "train/reward_queries": queries,
                "train/samples": samples,
                "train/reward_mean": acc.reduce(reward_sum, "mean").item(),
                "train/success_rate": acc.reduce(rollout.success.float().mean(), "mean").item(),
                "train/loss": acc.reduce(loss.detach().float(), "mean").item(),
                "train/grad_norm": float(grad_norm),
                "train/update_time_s": update_time,
                **{f"train/{name}": acc.reduce(v.float(), "mean").item() for name, v in stats.items()},
            }
            run.log(step, metrics)
        out_of_queries = cfg.optim.max_queries is not None and queries >= cfg.optim.max_queries
        if step % cfg.eval.eval_every == 0 or out_of_queries or step == cfg.optim.max_steps:
            last = evaluate()
            bar.set_postfix(step=step, **support_postfix(last))
        stop = stop_reason(cfg, step, queries, last, evaluator)  # decided before the checkpoint, which keeps it
        if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
            run.save_checkpoint(step, policy, tokenizer, checkpoint_state())
        fault_point(step)
    bar.close()
    if evaluated_at != step:
        last = evaluate()
    state = checkpoint_state()
    if acc.is_main_process:
        extra = {name: (base_dir / "model" / name).read_text() for name in ("task.json",)}
        save_model_dir(run.path / "model", policy, tokenizer, extra)
        run.save_checkpoint(step, policy, tokenizer, state)
        log_finish(run, step=step, reason=stop or "max_steps", queries=queries, wall_time_s=wall_before + time.time() - started,
                   device=acc.device, last=last)
    run.close()


if __name__ == "__main__":
    main()
