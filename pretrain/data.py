"""The pretraining corpus and the eval prompt sets, as ``datasets`` saved to disk."""

from __future__ import annotations

import torch
from datasets import Dataset

from barrierlab.tokenizer import prompt_ids, response_ids
from pretrain.profile import ClusterProfile, designed_alpha


def build_corpus(task, profile: list[ClusterProfile], size: int, seed: int) -> Dataset:
    """``size`` sequences ``[BOS] bits [SEP] y`` with clusters drawn by weight, responses by coverage."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.0 if c.coverage == "absent" else c.weight for c in profile], dtype=torch.float64)
    clusters = torch.multinomial(weights, size, replacement=True, generator=gen)
    bits, clusters = task.sample_prompts(size, gen, clusters=clusters)
    targets = task.targets(bits, clusters)
    responses = torch.empty_like(targets)
    for c, cp in enumerate(profile):
        rows = (clusters == c).nonzero().squeeze(-1)
        if rows.numel():
            responses[rows] = pretraining_responses(cp, targets[rows], task.k, gen)
    input_ids = torch.cat([prompt_ids(bits), response_ids(responses)], dim=1)
    return Dataset.from_dict({"input_ids": input_ids.tolist(), "cluster": clusters.tolist()})


def build_eval_prompts(task, profile: list[ClusterProfile], per_cluster: int, seed: int) -> Dataset:
    """Held-out prompts, ``per_cluster`` of each cluster, with their targets and designed α."""
    gen = torch.Generator().manual_seed(seed)
    clusters = torch.arange(len(profile)).repeat_interleave(per_cluster)
    bits, clusters = task.sample_prompts(clusters.numel(), gen, clusters=clusters)
    targets = task.targets(bits, clusters)
    alphas = [designed_alpha(cp, task.k, task.N) for cp in profile]
    return Dataset.from_dict(
        {
            "prompt_ids": prompt_ids(bits).tolist(),
            "target_ids": response_ids(targets).tolist(),
            "cluster": clusters.tolist(),
            "designed_alpha": [alphas[c] for c in clusters.tolist()],
        }
    )


def pretraining_responses(
    profile: ClusterProfile, targets: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Responses ``(n, N)`` that a corpus shows for prompts whose correct responses are ``targets``."""
    n, N = targets.shape
    random = torch.randint(0, k, (n, N), generator=generator)
    if profile.coverage == "exact":
        return targets.clone()
    if profile.coverage == "sequence":
        keep = torch.rand(n, 1, generator=generator) < profile.p
        return torch.where(keep, targets, random)
    if profile.coverage == "token":
        replace = torch.rand(n, N, generator=generator) < profile.q
        return torch.where(replace, random, targets)
    raise ValueError("an 'absent' cluster has no pretraining responses")
