"""The target rule, designed α against corpus frequencies, and the task's persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from barrierlab.tasks import TaskConfig, build_task
from barrierlab.tokenizer import ANSWER0, BIT0, prompt_ids
from pretrain.data import build_corpus, pretraining_responses
from pretrain.profile import ClusterProfile, designed_alpha


def test_target_rule_matches_hand_computation():
    task = build_task(TaskConfig(d=5, k=3, N=4, flip_prob=0.3, per_cluster_rule=True, seed=3), num_clusters=2)
    bits, clusters = task.sample_prompts(20, torch.Generator().manual_seed(0))
    y = task.targets(bits, clusters).numpy()
    for n in range(20):
        W1, W2 = task.W1[clusters[n]].numpy(), task.W2[clusters[n]].numpy()
        s = 2.0 * bits[n].numpy() - 1.0
        expected = [int(np.argmax(W1 @ s))]
        for _ in range(3):
            expected.append(int(np.argmax(W1 @ s + W2[:, expected[-1]])))
        assert y[n].tolist() == expected


def test_hand_example_with_fixed_weights():
    with pytest.warns(UserWarning, match=r"clusters \[0\] could not be well placed"):  # d = 2 bits is too few, as warned
        task = build_task(TaskConfig(d=2, k=2, N=3, flip_prob=0.0, per_cluster_rule=False), num_clusters=1)
    task.W1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    task.W2 = torch.tensor([[[0.0, 5.0], [5.0, 0.0]]], dtype=torch.float64)  # after symbol j, the other wins
    bits = torch.tensor([[1, 0]])  # s = (+1, -1): W1 s = (1, -1) -> y1 = 0, then alternate
    assert task.targets(bits, torch.tensor([0])).tolist() == [[0, 1, 0]]


def test_shared_rule_ignores_cluster_and_centres_are_separated():
    task = build_task(TaskConfig(d=16, k=8, N=4, per_cluster_rule=False), num_clusters=5)
    bits, _ = task.sample_prompts(50, torch.Generator().manual_seed(1))
    assert torch.equal(task.targets(bits, torch.zeros(50, dtype=torch.long)), task.targets(bits, torch.full((50,), 4)))
    assert task.well_placed == [True] * 5
    d = (task.centres[:, None] != task.centres[None]).sum(-1) + 16 * torch.eye(5, dtype=torch.long)
    assert d.min() >= 4
    answers = task.targets(task.centres, torch.arange(5))
    assert len({tuple(a) for a in answers.tolist()}) == 5


def test_prompts_are_their_clusters_centre_with_bits_flipped_at_flip_prob():
    task = build_task(TaskConfig(d=16, k=4, N=2, flip_prob=0.04), num_clusters=6)
    bits, clusters = task.sample_prompts(20_000, torch.Generator().manual_seed(2))
    flipped = (bits != task.centres[clusters]).double()
    # 320,000 Bernoulli(0.04) bits: standard error 3.5e-4, so 4 standard errors is 1.4e-3
    assert abs(flipped.mean().item() - 0.04) < 1.4e-3
    assert torch.bincount(clusters, minlength=6).min() > 20_000 / 6 * 0.9  # clusters drawn uniformly


def test_state_round_trip_rebuilds_the_same_task():
    cfg = TaskConfig(d=8, k=3, N=4, seed=5)
    a = build_task(cfg, 3)
    b = build_task(TaskConfig(d=8, k=3, N=4, seed=99), 3, state=a.state_dict())
    bits, clusters = a.sample_prompts(40, torch.Generator().manual_seed(0))
    assert torch.equal(a.targets(bits, clusters), b.targets(bits, clusters))


def test_designed_alpha_closed_forms():
    assert designed_alpha(ClusterProfile("exact"), 8, 8) == 1.0
    assert math.isclose(designed_alpha(ClusterProfile("sequence", p=0.3), 4, 2), 0.3 + 0.7 / 16)
    assert math.isclose(designed_alpha(ClusterProfile("token", q=0.5), 4, 3), (0.5 + 0.5 / 4) ** 3)
    assert designed_alpha(ClusterProfile("sequence", p=0.0), 8, 8) == 8.0**-8
    assert math.isnan(designed_alpha(ClusterProfile("absent"), 8, 8))


def test_designed_alpha_matches_corpus_frequency_of_y_star():
    """The fraction of pretraining responses equal to y* is the designed α (binomial 4-sigma bands)."""
    k, N, n = 3, 3, 40_000
    targets = torch.randint(0, k, (n, N), generator=torch.Generator().manual_seed(0))
    for profile in [ClusterProfile("sequence", p=0.2), ClusterProfile("token", q=0.5),
                    ClusterProfile("sequence", p=0.0), ClusterProfile("exact")]:
        responses = pretraining_responses(profile, targets, k, torch.Generator().manual_seed(1))
        freq = (responses == targets).all(-1).double().mean().item()
        alpha = designed_alpha(profile, k, N)
        assert abs(freq - alpha) <= 4 * math.sqrt(alpha * (1 - alpha) / n) + 1e-12, (profile, freq, alpha)
    # token noise: per-token coverage 1 - q + q/k
    responses = pretraining_responses(ClusterProfile("token", q=0.5), targets, k, torch.Generator().manual_seed(2))
    per_token = (responses == targets).double().mean().item()
    assert abs(per_token - (0.5 + 0.5 / k)) < 0.01


def test_corpus_respects_weights_and_absent_clusters():
    profile = [ClusterProfile("exact", weight=3.0), ClusterProfile("sequence", p=0.5), ClusterProfile("absent")]
    task = build_task(TaskConfig(d=6, k=3, N=3), 3)
    corpus = build_corpus(task, profile, 4000, seed=0)
    clusters = torch.tensor(corpus["cluster"])
    assert (clusters == 2).sum() == 0
    assert abs((clusters == 0).double().mean().item() - 0.75) < 0.03
    ids = torch.tensor(corpus["input_ids"])
    assert ids.shape == (4000, 6 + 2 + 3)
    # [BOS] bits [SEP] y: the exact cluster's responses are y*, the sequence(0.5) cluster's are y* at 0.5 + 0.5/27
    bits, responses = ids[:, 1:7] - BIT0, ids[:, 8:] - ANSWER0
    assert torch.equal(ids[:, :8], prompt_ids(bits))
    hit = (responses == task.targets(bits, clusters)).all(-1)
    assert hit[clusters == 0].all()
    n, alpha = int((clusters == 1).sum()), 0.5 + 0.5 / 27
    assert abs(hit[clusters == 1].double().mean().item() - alpha) <= 4 * (alpha * (1 - alpha) / n) ** 0.5


def test_each_cluster_has_its_own_rule():
    task = build_task(TaskConfig(d=16, k=8, N=4, per_cluster_rule=True), num_clusters=2)
    bits, _ = task.sample_prompts(200, torch.Generator().manual_seed(1))
    differ = (task.targets(bits, torch.zeros(200, dtype=torch.long)) != task.targets(bits, torch.ones(200, dtype=torch.long)))
    assert differ.any(-1).double().mean() > 0.5  # the same bits, another cluster's rule: mostly another answer
