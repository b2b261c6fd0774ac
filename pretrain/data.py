"""The pretraining corpus and the eval prompt sets, as ``datasets`` saved to disk; the fresh batches of the continuous
tasks (which train on new draws every step, as the authors' supervised stage does, and have no corpus)."""

from __future__ import annotations

import torch
from datasets import Dataset

from barrierlab.tokenizer import response_ids
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
    input_ids = torch.cat([task.prompts(bits), response_ids(responses)], dim=1)
    return Dataset.from_dict({"input_ids": input_ids.tolist(), "cluster": clusters.tolist()})


def build_eval_prompts(task, profile: list[ClusterProfile], per_cluster: int, seed: int) -> Dataset:
    """Held-out prompts, ``per_cluster`` of each cluster, with their targets and designed α."""
    gen = torch.Generator().manual_seed(seed)
    clusters = torch.arange(len(profile)).repeat_interleave(per_cluster)
    inputs, clusters = task.sample_prompts(clusters.numel(), gen, clusters=clusters)
    # a continuous task's base likelihood is not designed: it comes from how long the base trains
    alphas = [float("nan") if task.continuous else designed_alpha(cp, task.k, task.N) for cp in profile]
    return prompt_dataset(task, inputs, clusters, [alphas[c] for c in clusters.tolist()])


def prompt_dataset(task, inputs: torch.Tensor, clusters: torch.Tensor, designed: list[float]) -> Dataset:
    """Prompts (``prompt_ids``, or ``prompt_x`` for a continuous task), their targets, clusters and designed α."""
    prompts = task.prompts(inputs)
    return Dataset.from_dict({"prompt_x" if task.continuous else "prompt_ids": prompts.tolist(),
                              "target_ids": response_ids(task.targets(inputs, clusters)).tolist(),
                              "cluster": clusters.tolist(), "designed_alpha": designed})


def build_tracked_prompts(task) -> Dataset | None:
    """The prompts a task tracks one by one (the mixture centres of gaussian_mixture), or None."""
    tracked = task.tracked_prompts()
    if tracked is None:
        return None
    inputs, clusters = tracked
    return prompt_dataset(task, inputs, clusters, [float("nan")] * len(clusters))


def fresh_batch(task, profile: list[ClusterProfile], step: int, batch_size: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (prompts, target symbols) of pretraining ``step`` of a continuous task: new draws from the task every step,
    seeded by (seed, step) alone, so a resumed run sees the same batches. Components are drawn as the task draws them
    where every profile weight is equal (the authors' uniform mixture), else in proportion to the weights."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    weights = torch.tensor([c.weight for c in profile], dtype=torch.float64)
    clusters = None if bool((weights == weights[0]).all()) else torch.multinomial(weights, batch_size, True, generator=gen)
    inputs, clusters = task.sample_prompts(batch_size, gen, clusters=clusters)
    return task.prompts(inputs), task.targets(inputs, clusters)


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
