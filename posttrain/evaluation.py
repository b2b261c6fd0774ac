"""Exact evaluation during post-training: likelihoods of y* computed, not sampled.

The eval prompts are the base run's held-out set; on-/off-support is fixed by the *base* model's α.
"""

from __future__ import annotations

import torch

from barrierlab.loading import prompt_tensors
from barrierlab.metrics import fmt_value, split_masks, split_mean, tracked_indices
from barrierlab.policy import target_stats
from barrierlab.training import peak_memory_mb


class ExactEval:
    def __init__(self, eval_set, threshold: float, num_tracked: int, k: int, device, trained_clusters=None):
        self.k = k
        self.prompts, self.targets = prompt_tensors(eval_set, device)
        self.base_alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64)
        self.splits = split_masks(self.base_alpha, threshold)
        self.tracked = tracked_indices(self.base_alpha, num_tracked)
        # the eval prompts of the clusters the run trains on (all of them when it trains on all)
        self.splits["trained"] = self.splits["all"]
        if trained_clusters is not None and "cluster" in eval_set.column_names:
            self.splits["trained"] = torch.isin(torch.tensor(eval_set["cluster"]), torch.tensor(trained_clusters))

    @torch.no_grad()
    def __call__(self, model) -> dict:
        log_p, log_min = target_stats(model, self.prompts, self.targets, self.k)
        p = log_p.double().exp().cpu()
        metrics = {
            "eval/likelihood": p.mean().item(),
            "eval/expected_error": 1 - p.mean().item(),
            "eval/token_min_prob": log_min.exp().mean().item(),
        }
        for name in ("onsupport", "offsupport", "trained"):
            mean = split_mean(p, self.splits[name])
            metrics[f"eval/{name}_likelihood"] = mean
            metrics[f"eval/{name}_error"] = None if mean is None else 1 - mean
        metrics["eval/tracked_likelihood"] = p[self.tracked].tolist()
        return metrics

    def stop_value(self, metrics: dict, split: str) -> float | None:
        if split == "all":
            return metrics["eval/likelihood"]
        if split == "tracked":
            values = metrics["eval/tracked_likelihood"]
            return sum(values) / len(values) if values else None
        return metrics.get(f"eval/{split}_likelihood")


def out_of_queries(cfg, queries: int) -> bool:
    return cfg.optim.max_queries is not None and queries >= cfg.optim.max_queries


def due_for_eval(cfg, step: int, queries: int, moved: bool = True) -> bool:
    """Whether step ``step`` ends with an exact evaluation: every ``eval_every`` steps and at every step where the run
    may stop, so that a run's last metrics are always an evaluation of its final model. A policy that has not
    ``moved`` since its last evaluation would evaluate the same: only a last step repeats it."""
    last = out_of_queries(cfg, queries) or step == cfg.optim.max_steps
    return last or (step % cfg.eval.eval_every == 0 and moved)


def stop_reason(cfg, step: int, queries: int, last: dict | None, evaluator: ExactEval) -> str | None:
    """Why a post-training run stops after ``step`` (None: it goes on to the next step or to ``max_steps``):
    the query budget is spent, or the evaluation of this step reached the target likelihood."""
    if out_of_queries(cfg, queries):
        return "max_queries"
    target = cfg.optim.target_likelihood
    if target is not None and last is not None and step % cfg.eval.eval_every == 0:
        value = evaluator.stop_value(last, cfg.optim.stop_on)
        if value is not None and value >= target:
            return "target_likelihood"
    return None


def train_metrics(*, queries: int, samples: int, reward_mean: float, success_rate: float, loss: float,
                  grad_norm: float, update_time_s: float, **stats: float) -> dict:
    """A step's ``train/`` line, under the names both backends log (``stats``: entropy, and kl if it is used)."""
    return {"train/reward_queries": queries, "train/samples": samples, "train/reward_mean": reward_mean,
            "train/success_rate": success_rate, "train/loss": loss, "train/grad_norm": grad_norm,
            "train/update_time_s": update_time_s, **{f"train/{name}": value for name, value in stats.items()}}


def support_postfix(last: dict) -> dict[str, str]:
    """The progress bar's view of the latest evaluation: on- and off-support likelihood of y*."""
    return {"on": fmt_value(last["eval/onsupport_likelihood"], 4), "off": fmt_value(last["eval/offsupport_likelihood"], 4)}


def log_finish(run, *, step: int, reason: str, queries: int, wall_time_s: float, device, processes: int,
               last: dict, discovery) -> None:
    """A finished post-training run's closing ``done/`` metrics and printed summary, on either backend (the process
    count shows whether a launcher really started several)."""
    run.log(step, {"done/stop_reason": reason, "done/steps": step, "done/reward_queries": queries,
                   "done/wall_time_s": round(wall_time_s, 2), "done/peak_memory_mb": round(peak_memory_mb(device), 1),
                   "done/processes": processes, **discovery.done_metrics()})
    print(f"stopped ({reason}) after {step} steps on {processes} process{'es' * (processes > 1)}, {queries} reward "
          "queries: on-support likelihood "
          f"{fmt_value(last['eval/onsupport_likelihood'], 4)}, off-support likelihood "
          f"{fmt_value(last['eval/offsupport_likelihood'], 4)}")
