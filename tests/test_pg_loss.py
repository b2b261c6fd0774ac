"""The policy-gradient loss skips responses without signal and still equals the full computation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from barrierlab.models import ModelConfig, build_model
from barrierlab.policy import AnswerLogits, answer_logits
from barrierlab.tokenizer import prompt_ids
from posttrain.__main__ import policy_gradient_loss

K, N, D, B = 4, 5, 6, 12


def setup():
    model = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=D, k=K, N=N, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (B // 4, D), generator=g).repeat_interleave(4, 0)
    rollout = SimpleNamespace(prompts=prompt_ids(bits), responses=torch.randint(0, K, (B, N), generator=g),
                              mask=torch.ones(B, N))
    return model, rollout


def full(model, rollout, adv):
    """The loss, gradient and entropy over every response, as the theory writes them."""
    model.zero_grad()
    logp = torch.log_softmax(answer_logits(model, rollout.prompts, rollout.responses, K), -1)
    loss = -(adv * logp.gather(-1, rollout.responses[..., None]).squeeze(-1)).sum(-1).mean()
    loss.backward()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    return loss.item(), [p.grad.clone() for p in model.parameters()], entropy.item()


@pytest.mark.parametrize("signal_rows", [[0, 3, 4, 9], [], list(range(B))])
def test_skipping_zero_advantage_rows_changes_nothing(signal_rows):
    model, rollout = setup()
    adv = torch.zeros(B, N)
    adv[signal_rows] = torch.randn(len(signal_rows), N, generator=torch.Generator().manual_seed(1))
    want_loss, want_grads, want_entropy = full(model, rollout, adv)
    model.zero_grad()
    loss, stats = policy_gradient_loss(AnswerLogits(model, K), rollout, adv, K)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, abs=1e-6)
    assert stats["entropy"].item() == pytest.approx(want_entropy, rel=1e-6)
    for p, want in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-5)
    if not signal_rows:
        assert loss.item() == 0.0 and all(p.grad.abs().max() == 0 for p in model.parameters())
