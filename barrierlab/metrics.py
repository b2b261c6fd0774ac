"""Exact metrics shared by pretraining, post-training and evaluation (definitions: science.md)."""

from __future__ import annotations

import math

import torch


def likelihood_quantile(values: torch.Tensor, eps: float) -> float:
    """``Q(ε) = sup{a : P(v ≤ a) ≤ ε}`` of the empirical distribution of ``values``.

    ``P(v ≤ a)`` jumps to ``j/n`` at the j-th smallest value, so the supremum is the
    ``(⌊εn⌋ + 1)``-th smallest value: all but the worst ε fraction of prompts reach it.
    Pass sequence likelihoods for the LQ, worst next-token probabilities for the token-level LQ.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError("eps must be in [0, 1)")
    ordered = torch.sort(values.flatten().double()).values
    index = math.floor(eps * ordered.numel() + 1e-9)
    return float(ordered[index])


def split_masks(base_alpha: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Boolean masks of the prompts in each split: off-support means base α below ``threshold``."""
    off = base_alpha < threshold
    return {"all": torch.ones_like(off), "onsupport": ~off, "offsupport": off}


def tracked_indices(base_alpha: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` prompts spread evenly over the quantiles of the base likelihood, lowest first."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(base_alpha)
    picks = torch.linspace(0, base_alpha.numel() - 1, n).round().long()
    return order[picks]


def split_mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean of ``values`` over the prompts in ``mask``; None (null in JSON, 'n/a' in print) when the split is empty."""
    return values[mask].mean().item() if mask.any() else None


def fmt_value(value: float | None, digits: int = 3) -> str:
    """A metric for people to read: ``digits`` significant digits, 'n/a' for an empty split."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def quantile_curve(values: torch.Tensor, eps_grid: list[float]) -> list[float]:
    return [likelihood_quantile(values, e) for e in eps_grid]
