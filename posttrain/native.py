"""The native post-training loop: fresh prompts → a behaviour policy samples → the reward model scores (queries
counted) → advantages → one policy-gradient step; the ``Bookkeeper`` does the rest. Runs data-parallel under
torchrun or accelerate launch (each process draws its own prompts and samples, gradients are averaged)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object

from barrierlab.errors import UserError
from barrierlab.loading import load_model_dir
from barrierlab.models import LinearPolicyLM
from barrierlab.policy import ResponseLogits
from barrierlab.tokenizer import answer_ids
from barrierlab.training import leave_process_group, seed_everything, synchronize
from posttrain.advantages import advantages
from posttrain.behaviour import Sampler, StepBatches, collect
from posttrain.bookkeeping import Bookkeeper
from posttrain.loss import adaptive_gradient, linear_policy_gradient, policy_gradient_loss


def check_supported(cfg, model=None, processes: int = 1) -> None:
    """What the native loop cannot run, as a one-line UserError."""
    if cfg.optim.optimizer == "adaptive" and processes > 1:
        raise UserError("optim.optimizer 'adaptive' computes per-response gradients on one process; use adam/adagrad/sgd with several")


def make_optimizer(cfg, model):
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


def closed_form(cfg, acc, policy) -> bool:
    """Whether the update takes the linear model's closed-form gradient (``loss.linear_policy_gradient``): the linear
    model on one process, without a KL term or the adaptive step (those go through autograd)."""
    return (isinstance(policy, LinearPolicyLM) and acc.num_processes == 1 and cfg.algo.kl_coef == 0
            and cfg.optim.optimizer != "adaptive")


def update(cfg, acc, learner, optimizer, rollout, adv, q0, k: int):
    """One policy-gradient step on a rollout with signal: (loss, per-token stats, gradient norm)."""
    learner.train()  # in train mode only for the update
    policy = getattr(learner, "module", learner).model
    if closed_form(cfg, acc, policy):
        loss, stats = linear_policy_gradient(policy, rollout, adv)
        grad_norm = acc.clip_grad_norm_(learner.parameters(), cfg.optim.grad_clip or math.inf)
    elif cfg.optim.optimizer == "adaptive":
        grad_norm = adaptive_gradient(learner, rollout, adv)
        with torch.no_grad():  # the logged loss and entropy, as for the other optimisers; the step is the adaptive one
            loss, stats = policy_gradient_loss(learner, rollout, adv, k, q0, cfg.algo.kl_coef)
    else:
        with acc.autocast():
            loss, stats = policy_gradient_loss(learner, rollout, adv, k, q0, cfg.algo.kl_coef)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(learner.parameters(), cfg.optim.grad_clip or math.inf)
    optimizer.step()
    learner.eval()
    return loss, stats, grad_norm


def run_native(cfg, books: Bookkeeper, *, acc, model, tokenizer, task, reward, prompts) -> None:
    """Post-train ``model`` with the native loop; ``books`` writes the run folder."""
    k, N, G = task.k, task.N, cfg.algo.group_size
    rank, world = acc.process_index, acc.num_processes
    # q0, frozen: the mixture behaviours sample from it and the KL penalty is to it
    uses_q0 = cfg.algo.behaviour in ("mixture", "best_of_m", "token_best_of_m") or cfg.algo.kl_coef > 0
    q0 = load_model_dir(Path(cfg.base) / "model")[0].to(acc.device).eval() if uses_q0 else None
    seed_everything(cfg.run.seed)
    optimizer = make_optimizer(cfg, model)
    sample_gen = torch.Generator(device=acc.device).manual_seed(cfg.run.seed * 104729 + rank)
    # a zero-gradient step of Adagrad (lr_decay 0), SGD (no momentum) or the adaptive step changes no weight and no
    # state a later step reads, so a step without signal skips it; Adam's moments would move the weights
    memoryless = cfg.optim.optimizer != "adam"
    at_rest, signalled = True, False  # the last step left the policy as it was; some step so far had signal
    state = books.resume(model, optimizer)
    if state is not None:  # each process resumes its own prompt, sampling and reward-noise streams
        mine = state["native"]
        prompts.generator.set_state(mine["prompt_gen"][rank])
        sample_gen.set_state(mine["sample_gen"][rank])
        reward.load_state_dict(state["reward"][rank])
        at_rest, signalled = mine["at_rest"], mine["signalled"]
    learner, optimizer = acc.prepare(ResponseLogits(model, answer_ids(k)), optimizer)
    policy = acc.unwrap_model(learner).model
    sampler = Sampler(policy, q0, reward, k, N, cfg.algo.temperature, cfg.algo.mixture_weight, cfg.algo.m, sample_gen)
    per_rank = cfg.optim.batch_size // world
    batches = StepBatches(cfg.algo.behaviour, sampler, prompts, per_rank // G, G, acc.device,
                          ahead=max(1, cfg.algo.sample_ahead // per_rank))
    if state is not None:
        batches.load_state_dict(state["native"]["batches"][rank])

    def snapshot() -> dict:  # every process's streams: a collective, which all processes call
        gather = (lambda t: [t]) if world == 1 else (lambda t: gather_object([t]))
        return {"optimizer": optimizer.state_dict(), "reward": gather(reward.state_dict()),
                "native": {"prompt_gen": gather(prompts.generator.get_state()), "sample_gen": gather(sample_gen.get_state()),
                           "batches": gather(batches.state_dict()), "at_rest": at_rest, "signalled": signalled}}

    policy.eval()  # sampling and evaluation in eval mode; train mode only for the update
    books.start(policy, tokenizer, snapshot)
    while books.running():
        tick = time.perf_counter()
        step_prompts, columns, responses = batches.next(at_rest)
        rollout = collect(cfg.algo.behaviour, sampler, step_prompts, columns, responses)
        spent = int(acc.reduce(torch.tensor(rollout.queries, device=acc.device), "sum"))
        books.discovery.update(rollout.responses, columns["target"], rollout.mask, books.queries, spent,
                               rollout.one_per_row and world == 1)
        adv = advantages(rollout.rewards, cfg.algo.baseline, G, cfg.algo.scale_std, rollout.mask, acc.reduce)
        signal = has_signal(acc, adv, cfg.algo.kl_coef)
        at_rest = not signal and (memoryless or not signalled)  # Adam's moments move it after a signal
        signalled = signalled or signal
        if signal:
            loss, stats, grad_norm = update(cfg, acc, learner, optimizer, rollout, adv, q0, k)
        else:  # nothing to learn: the step's gradient is exactly 0
            loss, stats, grad_norm = torch.zeros((), device=acc.device), {"entropy": None}, 0.0
            if not memoryless:  # Adam's moments and step count advance as the full step would move them
                zero_gradients(learner)
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(acc.device)
        update_time = time.perf_counter() - tick  # sampling, rewards and the update; not evaluation

        books.count(spent, per_rank * world)
        books.check_finite(**{"train/grad_norm": float(grad_norm)})  # a nan loss has a nan gradient
        if books.train_row_due():
            mean = lambda t: acc.reduce(t.detach().float(), "mean").item()  # noqa: E731  (over processes)
            reward_mean = (rollout.rewards * rollout.mask).sum() / rollout.mask.sum().clamp_min(1)
            books.log_train(reward_mean=mean(reward_mean), success_rate=mean(rollout.success.float().mean()),
                            loss=mean(loss), grad_norm=float(grad_norm), update_time_s=update_time,
                            prm_calls=None if reward.model_calls() is None else
                            int(acc.reduce(torch.tensor(reward.model_calls(), device=acc.device), "sum")),
                            **{name: None if v is None else mean(v) for name, v in stats.items()})
        if world > 1 and books.discovery.success is None:
            books.discovery.sync(lambda t: reduce_min(t, acc.device))
        books.end_step(moved=not at_rest)
    books.finish()
    learner = optimizer = None  # the DDP wrapper goes before the process group does (see leave_process_group)
    leave_process_group(acc)
