"""What ``python -m eval`` measures on one checkpoint: exact likelihoods, quantile curves and pass@k.

Everything except pass@k is exact (one teacher-forced pass); pass@k counts, per prompt, how many of
``n`` sampled responses equal y* and applies the unbiased estimator. The on-/off-support split is fixed
by the *base* model's α, so every checkpoint is scored on the same prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from barrierlab.metrics import quantile_curve, split_mean
from barrierlab.policy import sample, target_stats
from eval.passk import pass_at_k


@dataclass
class PromptSet:
    """The eval prompts on the device, with their correct responses and split masks (on the CPU)."""

    prompts: torch.Tensor
    targets: torch.Tensor
    masks: dict[str, torch.Tensor]


@torch.no_grad()
def count_correct(model, prompt_set: PromptSet, k: int, n: int, *, batch_size: int, temperature: float,
                  generator: torch.Generator, progress: bool = False) -> torch.Tensor:
    """How many of ``n`` responses sampled per prompt equal y* exactly, as ``(P,)`` on the CPU."""
    P, N = prompt_set.targets.shape
    rows = torch.arange(P, device=prompt_set.prompts.device).repeat_interleave(n)  # prompt of each sample
    counts = torch.zeros(P, dtype=torch.long, device=rows.device)
    for start in tqdm(range(0, rows.numel(), batch_size), desc="pass@k samples", disable=not progress, mininterval=1.0):
        chunk = rows[start : start + batch_size]
        responses = sample(model, prompt_set.prompts[chunk], N, k, temperature=temperature, generator=generator)
        hits = (responses == prompt_set.targets[chunk]).all(-1)
        counts.index_add_(0, chunk, hits.long())
    return counts.cpu()


def summarise(log_p: torch.Tensor, log_min: torch.Tensor, correct: torch.Tensor, masks: dict[str, torch.Tensor],
              n: int, ks: list[int], eps_grid: list[float]) -> dict:
    """Per-checkpoint numbers of eval.json from per-prompt log-likelihoods and correct-sample counts."""
    p = log_p.double().exp()
    token_min = log_min.double().exp()
    passk = np.stack([pass_at_k(correct.numpy(), n, k) for k in ks])  # (len(ks), P)
    likelihood = {s: split_mean(p, m) for s, m in masks.items()}
    return {
        "likelihood": likelihood,
        "expected_error": {s: None if v is None else 1 - v for s, v in likelihood.items()},
        "token_min_prob": {s: split_mean(token_min, m) for s, m in masks.items()},
        "LQ": quantile_curve(p, eps_grid),
        "token_LQ": quantile_curve(token_min, eps_grid),
        "pass_at_k": {s: passk[:, m.numpy()].mean(1).tolist() if m.any() else None for s, m in masks.items()},
    }


def evaluate_checkpoint(model, prompt_set: PromptSet, k: int, *, n: int, ks: list[int], eps_grid: list[float],
                        batch_size: int, temperature: float, generator: torch.Generator,
                        progress: bool = False) -> tuple[dict, dict]:
    """``(summary, per_prompt)``: eval.json's numbers and the per-prompt columns of per_prompt.csv."""
    log_p, log_min = target_stats(model, prompt_set.prompts, prompt_set.targets, k, batch_size)
    log_p, log_min = log_p.cpu(), log_min.cpu()
    correct = count_correct(model, prompt_set, k, n, batch_size=batch_size, temperature=temperature,
                            generator=generator, progress=progress)
    per_prompt = {
        "likelihood": log_p.double().exp().tolist(),
        # the likelihood underflows to 0 below ~1e-308; its log10 does not
        "log10_likelihood": (log_p.double() / math.log(10)).tolist(),
        "token_min_prob": log_min.double().exp().tolist(),
        "correct": correct.tolist(),
    }
    return summarise(log_p, log_min, correct, prompt_set.masks, n, ks, eps_grid), per_prompt
