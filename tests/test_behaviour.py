"""Behaviour policies: query accounting, Algorithms 1 and 2, and the linear policy gradient in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from barrierlab.models import LinearPolicyConfig, LinearPolicyLM
from barrierlab.policy import ResponseLogits
from barrierlab.tokenizer import answer_ids, prompt_ids, vocab_size
from posttrain.advantages import advantages
from posttrain.behaviour import Rollout, Sampler, collect
from posttrain.loss import policy_gradient_loss
from rewards import RewardConfig, make_reward


class Counting:
    """Wraps a reward model and counts, by itself, every response or prefix sent to it: one query per response
    scored by an outcome reward, one per prefix checked. (A process reward scoring whole responses charges by its
    own rule, prefixes up to the first rejected one, which test_process_queries_under_every_single_draw_behaviour
    checks independently.)"""

    def __init__(self, inner):
        self.inner, self.sent = inner, 0
        self.granularity, self.signed = inner.granularity, inner.signed

    def __call__(self, prompts, responses, columns):
        out = self.inner(prompts, responses, columns)
        self.sent += responses.shape[0] if self.granularity == "outcome" else out.queries
        return out

    def check_last(self, prompts, prefixes, columns):
        ok, q = self.inner.check_last(prompts, prefixes, columns)
        self.sent += prefixes.shape[0]
        return ok, q


def linear(d=4, k=2, seed=None):
    model = LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k)))
    if seed is not None:
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            model.W1.copy_(torch.randn(model.W1.shape, generator=g))
            model.W2.copy_(torch.randn(model.W2.shape, generator=g))
    return model.eval()


def setup(B, k, N, reward="outcome", m=5, d=4, **kw):
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (B, d), generator=g)
    target = torch.randint(0, k, (B, N), generator=g)
    counted = Counting(make_reward(RewardConfig(name=reward, **kw)))
    sampler = Sampler(linear(d, k), linear(d, k), counted, k, N, 1.0, 0.5, m, torch.Generator().manual_seed(1))
    return sampler, prompt_ids(bits), {"target": target}, counted


@pytest.mark.parametrize("behaviour", ["on_policy", "uniform", "mixture", "teacher_forcing"])
def test_process_queries_under_every_single_draw_behaviour(behaviour):
    """The built-in verifiers stop at the first rejected prefix: a response costs min(accepted + 1, N) queries."""
    sampler, prompts, cols, counted = setup(200, 3, 4, reward="process")
    rollout = collect(behaviour, sampler, prompts, cols)
    correct = (rollout.responses == cols["target"]).long().cumprod(-1).sum(-1)  # the accepted prefix's length
    assert rollout.queries == counted.sent == int((correct + 1).clamp(max=4).sum())
    assert torch.equal(rollout.rewards, (torch.arange(4) < correct[:, None]).float())


@pytest.mark.parametrize("behaviour", ["on_policy", "uniform", "mixture", "teacher_forcing"])
def test_one_query_per_response_under_outcome(behaviour):
    sampler, prompts, cols, counted = setup(64, 3, 3)
    rollout = collect(behaviour, sampler, prompts, cols)
    assert rollout.queries == counted.sent == 64
    assert rollout.responses.shape == (64, 3)
    if behaviour == "teacher_forcing":
        assert rollout.success.all() and (rollout.rewards == 1).all()


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_mixture_weight_is_the_share_of_base_samples(weight):
    B, k, N = 4000, 3, 3
    sampler, prompts, _, _ = setup(B, k, N)
    with torch.no_grad():  # a base that always answers 0 0 0: its samples are recognisable
        sampler.base.W1.zero_()
        sampler.base.W2.copy_(50.0 * torch.nn.functional.one_hot(torch.zeros(k + 1, dtype=torch.long), k).T)
    sampler.mixture_weight = weight
    zeros = (sampler.mixture(prompts) == 0).all(-1).double().mean().item()
    want = weight + (1 - weight) * k**-N  # the uniform component answers 0 0 0 too, with probability k^-N
    assert abs(zeros - want) <= 4 * (want * (1 - want) / B) ** 0.5 + 1e-12


def test_best_of_m_charges_every_try_and_matches_the_geometric_law():
    B, k, N, m = 4000, 2, 2, 5
    sampler, prompts, cols, counted = setup(B, k, N, m=m)
    rollout = collect("best_of_m", sampler, prompts, cols)
    assert rollout.queries == counted.sent
    p = k**-N  # the uniform learner and the uniform base both hit y* with probability 1/4
    # a row costs 1 query if p_t's sample succeeds, else 1 + j: the j-th try succeeds (j < m) or the m tries run out
    law = {1: p, **{1 + j: (1 - p) ** j * p for j in range(1, m)}, 1 + m: (1 - p) ** m}
    mean = sum(q * w for q, w in law.items())
    sd = (sum((q - mean) ** 2 * w for q, w in law.items()) / B) ** 0.5
    assert mean == pytest.approx(1 + (1 - p) * (1 - (1 - p) ** m) / p)  # the closed form
    assert abs(rollout.queries / B - mean) < 4 * sd
    success = 1 - (1 - p) ** (m + 1)
    assert abs(rollout.success.double().mean().item() - success) < 4 * (success * (1 - success) / B) ** 0.5
    assert torch.equal(rollout.success, (rollout.responses == cols["target"]).all(-1))
    assert torch.equal(rollout.rewards[:, 0] > 0, rollout.success)


def test_token_best_of_m_with_large_m_finds_every_target_and_charges_what_it_checked():
    B, k, N = 500, 3, 3
    sampler, prompts, cols, counted = setup(B, k, N, reward="process", m=1000)
    rollout = collect("token_best_of_m", sampler, prompts, cols)
    assert rollout.success.all() and torch.equal(rollout.responses, cols["target"])
    assert (rollout.rewards == 1).all() and (rollout.mask == 1).all()
    assert rollout.queries == counted.sent
    # each position is a geometric search with success 1/k: k tries on average, variance (1-p)/p^2
    std = math.sqrt(N * (1 - 1 / k) * k**2 / B)
    assert abs(rollout.queries / B - N * k) < 4 * std


def test_token_best_of_m_with_small_m_stops_at_the_failed_position():
    sampler, prompts, cols, counted = setup(300, 4, 3, reward="process", m=1, signed=True)
    rollout = collect("token_best_of_m", sampler, prompts, cols)
    n_ok = (rollout.rewards == 1).sum(-1)
    assert rollout.queries == counted.sent == int((n_ok + 1).clamp(max=3).sum())  # one candidate per reached position
    for b in range(300):
        n_ok = int((rollout.rewards[b] == 1).sum())
        if n_ok < 3:
            assert rollout.rewards[b, n_ok] == -1 and rollout.mask[b, n_ok + 1 :].sum() == 0
            assert rollout.responses[b, n_ok] != cols["target"][b, n_ok]
        assert torch.equal(rollout.responses[b, :n_ok], cols["target"][b, :n_ok])


def test_token_best_of_m_success_means_y_star_even_when_a_noisy_verifier_accepts_wrong_tokens():
    sampler, prompts, cols, _ = setup(2000, 3, 3, reward="noisy_process", m=4, params={"flip_prob": 0.3})
    rollout = collect("token_best_of_m", sampler, prompts, cols)
    accepted_to_the_end = (rollout.rewards == 1).all(-1)
    exact = (rollout.responses == cols["target"]).all(-1)
    assert (accepted_to_the_end & ~exact).sum() > 100  # the noise let wrong tokens through: these are not successes
    assert torch.equal(rollout.success, accepted_to_the_end & exact)

def counting(k, first, d=4):
    """A linear model that answers ``first`` and then ``prev + 1 mod k`` at every step, almost surely."""
    model = linear(d, k)
    follow = torch.tensor([(j + 1) % k for j in range(k)] + [first])  # column k is the start
    with torch.no_grad():
        model.W2.copy_(50.0 * torch.nn.functional.one_hot(follow, k).T)
    return model


def steered(B, k, N, reward, m, d=4):
    """Algorithms 1 and 2 where q0 and p_t differ: the base answers y* = (0, 1, 2, 0, …) itself, the learner a
    sequence that starts wrong, so only the q0 half of the mixture finds y* (and only if read at the right prefix)."""
    bits = torch.randint(0, 2, (B, d), generator=torch.Generator().manual_seed(0))
    target = (torch.arange(N) % k).expand(B, N).clone()
    counted = Counting(make_reward(RewardConfig(name=reward)))
    sampler = Sampler(counting(k, 1, d), counting(k, 0, d), counted, k, N, 1.0, 0.5, m,
                      torch.Generator().manual_seed(1))
    return sampler, prompt_ids(bits), {"target": target}, counted


def test_best_of_m_retries_from_half_base_half_uniform():
    B, k, N, m = 4000, 3, 4, 2
    sampler, prompts, cols, counted = steered(B, k, N, "outcome", m)
    rollout = collect("best_of_m", sampler, prompts, cols)
    p = 0.5 * 1 + 0.5 * k**-N  # a try finds y*: the base always, the uniform half with k^-N; p_t never
    success = 1 - (1 - p) ** m
    law = {1 + j: (1 - p) ** (j - 1) * p for j in range(1, m)} | {1 + m: (1 - p) ** (m - 1)}  # p_t's sample + j tries
    mean = sum(q * w for q, w in law.items())
    sd = (sum((q - mean) ** 2 * w for q, w in law.items()) / B) ** 0.5
    assert rollout.queries == counted.sent
    assert abs(rollout.queries / B - mean) < 4 * sd
    assert abs(rollout.success.double().mean().item() - success) < 4 * (success * (1 - success) / B) ** 0.5


@pytest.mark.parametrize("m", [1, 1000])
def test_token_best_of_m_draws_each_token_from_half_base_half_uniform_after_the_verified_prefix(m):
    B, k, N = 4000, 3, 4
    sampler, prompts, cols, counted = steered(B, k, N, "process", m)
    rollout = collect("token_best_of_m", sampler, prompts, cols)
    a = 0.5 * 1 + 0.5 / k  # a candidate is y*_i: q0(. | x, y*_<i) names it, the uniform half with 1/k
    assert rollout.queries == counted.sent
    if m == 1:  # one candidate per position: a row reaches position i with probability a^i and pays one query there
        mean, success = sum(a**i for i in range(N)), a**N
        sd = (sum(a**i * (1 - a**i) for i in range(N)) + 2 * sum(a**j * (1 - a**i) for i in range(N) for j in range(i + 1, N))) ** 0.5
        assert abs(rollout.queries / B - mean) < 4 * sd / B**0.5
        assert abs(rollout.success.double().mean().item() - success) < 4 * (success * (1 - success) / B) ** 0.5
    else:  # every position is found: a geometric search with success a, 1/a queries on average, variance (1-a)/a²
        assert rollout.success.all()
        assert abs(rollout.queries / B - N / a) < 4 * (N * (1 - a) / a**2 / B) ** 0.5


def test_linear_policy_gradient_equals_closed_form():
    """∇ of -mean_b Σ_i A_bi log p(y_bi) for logits W1 s + W2[:, y_{i-1}] is -mean_b Σ_i A_bi (e_y - p) ⊗ features."""
    d, k, N, B = 4, 3, 3, 5
    model = linear(d, k, seed=2).train()
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(0, 2, (B, d), generator=g)
    responses = torch.randint(0, k, (B, N), generator=g)
    rewards = torch.randint(0, 2, (B, N), generator=g).float()
    rollout = Rollout(prompt_ids(bits), responses, rewards, torch.ones(B, N), torch.zeros(B, dtype=torch.bool), 0)
    adv = advantages(rewards, "none")
    loss, _ = policy_gradient_loss(ResponseLogits(model, answer_ids(k)), rollout, adv, k)
    loss.backward()
    W1, W2 = model.W1.detach().double(), model.W2.detach().double()
    gW1, gW2 = torch.zeros(k, d, dtype=torch.float64), torch.zeros(k, k + 1, dtype=torch.float64)
    for b in range(B):
        s = 2.0 * bits[b].double() - 1
        prev = k
        for i in range(N):
            p = torch.softmax(W1 @ s + W2[:, prev], 0)
            e = torch.nn.functional.one_hot(responses[b, i], k).double()
            gW1 -= adv[b, i] * torch.outer(e - p, s) / B
            gW2[:, prev] -= adv[b, i] * (e - p) / B
            prev = int(responses[b, i])
    assert torch.allclose(model.W1.grad.double(), gW1, atol=1e-6)
    assert torch.allclose(model.W2.grad.double(), gW2, atol=1e-6)
