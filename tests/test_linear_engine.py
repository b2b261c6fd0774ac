"""The linear model's closed-form policy gradient (posttrain.loss.linear_policy_gradient) against autograd of the
policy-gradient loss, on the authors' continuous task."""

from __future__ import annotations

import torch

from barrierlab.models import ModelConfig, build_model
from barrierlab.policy import ResponseLogits, sample
from barrierlab.tasks import TaskConfig, build_task
from barrierlab.tokenizer import answer_ids
from posttrain.advantages import advantages
from posttrain.behaviour import Rollout
from posttrain.loss import linear_policy_gradient, policy_gradient_loss


def rollout_on_the_gaussian_mixture(process: bool, k: int = 5, N: int = 9, B: int = 64):
    task = build_task(TaskConfig(name="gaussian_mixture", d=6, k=k, N=N, sigma=0.05, seed=1), num_clusters=6)
    model = build_model(ModelConfig(kind="linear"), d=6, k=k, seed=0)
    with torch.no_grad():  # a policy that is neither uniform nor certain
        model.W1.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
        model.W2.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    x, comp = task.sample_prompts(B, gen)
    prompts, target = task.prompts(x), task.targets(x, comp)
    responses = sample(model, prompts, N, k, generator=gen)
    responses[:4] = target[:4]  # some fully correct, so outcome rewards differ
    correct = (responses == target).long().cumprod(-1).float()
    rewards = 2 * (correct if process else correct[:, -1:].expand(-1, N)) - 1  # ±1, as the authors'
    mask = torch.ones(B, N)
    mask[-3:, 5:] = 0  # a few responses that stopped early (Algorithm 2's), to cover the mask
    adv = advantages(rewards, "none" if process else "batch_mean", 1, False, mask)
    return model, Rollout(prompts, responses, rewards, mask, correct[:, -1].bool(), B * N), adv


def test_closed_form_gradient_equals_autograd_of_the_loss():
    for process in (False, True):
        model, rollout, adv = rollout_on_the_gaussian_mixture(process)
        loss, stats = policy_gradient_loss(ResponseLogits(model, answer_ids(5)), rollout, adv, 5)
        loss.backward()
        expected = [p.grad.clone() for p in (model.W1, model.W2)]
        model.zero_grad(set_to_none=True)
        closed_loss, closed_stats = linear_policy_gradient(model, rollout, adv)
        assert abs(closed_loss.item() - loss.item()) < 1e-5 * max(1.0, abs(loss.item()))
        assert abs(closed_stats["entropy"].item() - stats["entropy"].item()) < 1e-5
        for got, want in zip((model.W1.grad, model.W2.grad), expected):
            assert want.abs().max() > 1e-3  # a real gradient, not zeros on both sides
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


def test_closed_form_gradient_matches_the_hand_formula_on_one_response():
    # one prompt, one response of two steps: d loss / d W1 = -A Σ_i (e_{y_i} - p_i) x^T, d/d W2[:, y_{i-1}] alike
    model, rollout, adv = rollout_on_the_gaussian_mixture(True, k=3, N=2, B=1)
    adv = torch.tensor([[0.5, -2.0]])
    linear_policy_gradient(model, rollout, adv)
    x, y = rollout.prompts[0], rollout.responses[0]
    grad_W1, grad_W2 = torch.zeros(3, 6), torch.zeros(3, 4)
    prev = 3
    for i in range(2):
        p = torch.softmax(model.W1 @ x + model.W2[:, prev], -1)
        step = -adv[0, i] * (torch.nn.functional.one_hot(y[i], 3) - p)
        grad_W1 += torch.outer(step, x)
        grad_W2[:, prev] += step
        prev = int(y[i])
    assert torch.allclose(model.W1.grad, grad_W1, atol=1e-6) and torch.allclose(model.W2.grad, grad_W2, atol=1e-6)
