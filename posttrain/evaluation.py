"""Exact evaluation during post-training: likelihoods of y* computed, not sampled.

The eval prompts are the base run's held-out set; on-/off-support is fixed by the *base* model's α. The tracked
prompts are the base run's tracked set where it has one (the mixture centres of gaussian_mixture), else
``num_tracked`` eval prompts spread over the base α.
"""

from __future__ import annotations

import torch

from barrierlab.loading import prompt_tensors
from barrierlab.metrics import split_masks, split_mean, tracked_indices
from barrierlab.policy import target_stats


class ExactEval:
    """The exact likelihood of y* on the base run's eval prompts: overall, on/off-support, on the trained clusters'
    prompts and on ``num_tracked`` prompts spread over the base α."""

    def __init__(self, eval_set, threshold: float, num_tracked: int, k: int, device, trained_clusters=None,
                 tracked_set=None):
        self.k, self.device = k, device
        self.prompts, self.targets = prompt_tensors(eval_set, device)
        self.base_alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64)
        self.splits = split_masks(self.base_alpha, threshold)
        self.tracked = tracked_indices(self.base_alpha, num_tracked)
        self.tracked_prompts = None if tracked_set is None else prompt_tensors(tracked_set, device)
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
        if self.tracked_prompts is None:
            metrics["eval/tracked_likelihood"] = p[self.tracked].tolist()
        else:
            metrics["eval/tracked_likelihood"] = target_stats(model, *self.tracked_prompts, self.k)[0].double().exp().tolist()
        return metrics

    def stop_value(self, metrics: dict, split: str) -> float | None:
        if split == "all":
            return metrics["eval/likelihood"]
        if split == "tracked":
            values = metrics["eval/tracked_likelihood"]
            return sum(values) / len(values) if values else None
        return metrics.get(f"eval/{split}_likelihood")
