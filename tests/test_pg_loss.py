"""The policy-gradient loss and the adaptive step: responses without signal are skipped, and the results
still equal the full computation and the closed form."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from barrierlab.models import LinearPolicyConfig, LinearPolicyLM, ModelConfig, build_model
from barrierlab.policy import AnswerLogits, answer_logits
from barrierlab.tokenizer import prompt_ids, vocab_size
from posttrain.__main__ import adaptive_gradient, policy_gradient_loss

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


def test_adaptive_step_against_the_closed_form_on_the_linear_model():
    """η_b = 1/(4 + 2‖∇ log p(y_b|x_b)‖²) per response, with the linear policy's gradients in closed form;
    responses without signal (rows 1 and 4) contribute nothing."""
    k, d, n, b = 3, 4, 4, 6
    g = torch.Generator().manual_seed(0)
    model = LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k)))
    with torch.no_grad():
        model.W1.copy_(torch.randn(k, d, generator=g))
        model.W2.copy_(torch.randn(k, k + 1, generator=g))
    bits = torch.randint(0, 2, (b, d), generator=g)
    responses = torch.randint(0, k, (b, n), generator=g)
    adv = torch.randn(b, n, generator=g)
    adv[[1, 4]] = 0.0
    rollout = SimpleNamespace(prompts=prompt_ids(bits), responses=responses, mask=torch.ones(b, n))
    adaptive_gradient(AnswerLogits(model, k), rollout, adv)

    W1, W2 = model.W1.detach().double(), model.W2.detach().double()
    want1, want2 = torch.zeros_like(W1), torch.zeros_like(W2)
    for r in range(b):
        s = 2.0 * bits[r].double() - 1
        seq1, seq2, adv1, adv2 = (torch.zeros_like(W1), torch.zeros_like(W2), torch.zeros_like(W1), torch.zeros_like(W2))
        prev = k
        for i in range(n):
            e_minus_p = torch.nn.functional.one_hot(responses[r, i], k).double() - torch.softmax(W1 @ s + W2[:, prev], 0)
            seq1 += torch.outer(e_minus_p, s)
            seq2[:, prev] += e_minus_p
            adv1 += adv[r, i] * torch.outer(e_minus_p, s)
            adv2[:, prev] += adv[r, i] * e_minus_p
            prev = int(responses[r, i])
        eta = 1.0 / (4.0 + 2.0 * (seq1.pow(2).sum() + seq2.pow(2).sum()))
        want1 -= eta * adv1 / b
        want2 -= eta * adv2 / b
    torch.testing.assert_close(model.W1.grad.double(), want1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.W2.grad.double(), want2, atol=1e-6, rtol=1e-5)
