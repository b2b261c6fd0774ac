"""Advantages from per-prefix rewards: outcome (one value per response) and process (A_i = prefix reward).

Rewards arrive as ``(B, N)``: for an outcome reward the verdict repeated at every position, so the
policy-gradient loss ``-Σ_i A_i log p(y_i | x, y_<i)`` covers both cases. Baselines (all optional):

- ``none``: A = r (the theory's choice);
- ``batch_mean``: subtract the mean reward of the batch;
- ``position_mean``: subtract the batch mean at each position i (equals batch_mean for outcome);
- ``group_mean``: subtract the mean over the G responses of the same prompt (GRPO), optionally divide by
  their standard deviation;
- ``rloo``: subtract the mean over the *other* G - 1 responses of the same prompt (RLOO).

Rows ``[g*G, (g+1)*G)`` hold the G responses of prompt g. ``mask`` (B, N) marks positions that exist
(best-of-m process exploration can stop early); masked positions get advantage 0 and are left out of means.

Under data parallelism each process holds a slice of the batch (whole groups). ``reduce`` sums or averages a tensor
over the processes (``Accelerator.reduce`` averages): with it, ``batch_mean`` and ``position_mean`` are means over the
whole batch, as on one process, so they do not change with the number of processes; the group baselines need none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from posttrain.config import Baseline


def advantages(
    rewards: torch.Tensor,
    baseline: Baseline = "none",
    group_size: int = 1,
    scale_std: bool = False,
    mask: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    mask = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    r = rewards * mask
    if baseline == "none":
        adv = r
    elif baseline in ("batch_mean", "position_mean"):
        dims = (0, 1) if baseline == "batch_mean" else 0
        sums = torch.stack([r.sum(dims, keepdim=True), mask.sum(dims, keepdim=True)])  # one collective for both
        total, count = reduce(sums) if reduce is not None else sums  # a ratio: the same whether summed or averaged
        adv = r - torch.where(count > 0, total / count, 0.0)
    else:
        B, N = r.shape
        if group_size < 2 or B % group_size:
            raise ValueError(f"baseline '{baseline}' needs group_size ≥ 2 dividing the batch ({B})")
        rg, mg = r.view(-1, group_size, N), mask.view(-1, group_size, N)
        total, count = rg.sum(1, keepdim=True), mg.sum(1, keepdim=True)
        if baseline == "group_mean":
            mean = total / count.clamp_min(1)
            adv = rg - mean
            if scale_std:
                var = ((rg - mean) ** 2 * mg).sum(1, keepdim=True) / (count - 1).clamp_min(1)
                adv = adv / (var.sqrt() + 1e-4)
        elif baseline == "rloo":
            adv = rg - (total - rg) / (count - 1).clamp_min(1)
        else:
            raise ValueError(f"unknown baseline '{baseline}'")
        adv = adv.reshape(B, N)
    return adv * mask
