"""The policy-gradient loss and the adaptive step: responses without signal are skipped, and the results
still equal the full computation and the closed form; what the KL term estimates, by enumeration."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from barrierlab.models import LinearPolicyConfig, LinearPolicyLM, ModelConfig, build_model
from barrierlab.policy import ResponseLogits, answer_logits
from barrierlab.tokenizer import answer_ids, prompt_ids, vocab_size
from posttrain.loss import adaptive_gradient, policy_gradient_loss

K, N, D, B = 4, 5, 6, 12


def setup():
    model = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=D, k=K, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (B // 4, D), generator=g).repeat_interleave(4, 0)
    rollout = SimpleNamespace(prompts=prompt_ids(bits), responses=torch.randint(0, K, (B, N), generator=g),
                              mask=torch.ones(B, N))
    return model, rollout


def full(model, rollout, adv, base=None, kl_coef=0.0):
    """The loss, gradient and entropy over every response, as the theory writes them (plus the exact KL)."""
    model.zero_grad()
    logp = torch.log_softmax(answer_logits(model, rollout.prompts, rollout.responses, K), -1)
    loss = -(adv * logp.gather(-1, rollout.responses[..., None]).squeeze(-1)).sum(-1).mean()
    if kl_coef:
        base_logp = torch.log_softmax(answer_logits(base, rollout.prompts, rollout.responses, K), -1).detach()
        loss = loss + kl_coef * ((logp.exp() * (logp - base_logp)).sum(-1) * rollout.mask).sum(-1).mean()
    loss.backward()
    entropy = (-(logp.exp() * logp).sum(-1) * rollout.mask).sum() / rollout.mask.sum()
    return loss.item(), [p.grad.clone() for p in model.parameters()], entropy.item()


def signal(rows: list[int], mask=None) -> torch.Tensor:
    """Advantages that are non-zero on ``rows`` only (and zero wherever ``mask`` is)."""
    adv = torch.zeros(B, N)
    adv[rows] = torch.randn(len(rows), N, generator=torch.Generator().manual_seed(1))
    return adv if mask is None else adv * mask


@pytest.mark.parametrize("kl_coef", [0.0, 0.3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("signal_rows", [[0, 3, 4, 9], [], list(range(B))])
def test_skipping_zero_advantage_rows_changes_nothing(signal_rows, masked, kl_coef):
    model, rollout = setup()
    if masked:  # responses that stopped early (token-wise search): fewer positions, fewer in the entropy
        rollout.mask[:, 3:] = 0.0
        rollout.mask[[0, 5]] = 1.0
    base = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=D, k=K, seed=1)
    adv = signal(signal_rows, rollout.mask)
    want_loss, want_grads, want_entropy = full(model, rollout, adv, base, kl_coef)
    model.zero_grad()
    loss, stats = policy_gradient_loss(ResponseLogits(model, answer_ids(K)), rollout, adv, K, base, kl_coef)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, abs=1e-6)
    assert stats["entropy"].item() == pytest.approx(want_entropy, rel=1e-6)
    for p, want in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-5)
    if not signal_rows and not kl_coef:
        assert loss.item() == 0.0 and all(p.grad.abs().max() == 0 for p in model.parameters())


SIGNAL_ROWS = [0, 1, 2, 3, 4, 5, 6, 8, 10]  # rank 0's half all has signal, rank 1's half only partly


def data_parallel_worker(out: str) -> None:
    """One of two torchrun processes (gloo), each with half the batch; rank 0 saves the synchronised gradient."""
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model, rollout = setup()
    ddp = torch.nn.parallel.DistributedDataParallel(ResponseLogits(model, answer_ids(K)))  # broadcasts buffers
    half = slice(rank * B // 2, (rank + 1) * B // 2)
    part = SimpleNamespace(prompts=rollout.prompts[half], responses=rollout.responses[half], mask=rollout.mask[half])
    for _ in range(3):  # collectives out of step would show on a later step: a hang or an error
        model.zero_grad()
        loss, _ = policy_gradient_loss(ddp, part, signal(SIGNAL_ROWS)[half], K)
        loss.backward()
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], out)
    del ddp  # before the process group: DDP's reducer torn down after it can hang at exit (seen with gloo)
    torch.distributed.destroy_process_group()


def test_data_parallel_gradient_is_the_full_batch_gradient(tmp_path):
    """torchrun, 2 processes: only rank 1 runs the entropy-only forward, and DDP's averaged gradient is still the
    full-batch gradient."""
    out = tmp_path / "grads.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, rollout = setup()
    _, want, _ = full(model, rollout, signal(SIGNAL_ROWS))
    for got, w in zip(torch.load(out), want):
        torch.testing.assert_close(got, w, atol=1e-6, rtol=1e-5)


def test_adaptive_step_against_the_closed_form_on_the_linear_model():
    """η_b = 1/(4 + 2‖∇ log p(y_b|x_b)‖²) per response, summed, with the linear policy's gradients in closed form;
    responses without signal (rows 1 and 4) contribute nothing, and masked positions (Algorithm 2's rows after a
    failure: rows 2 and 5 end early) are no part of the response."""
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
    lengths = [n, n, 2, n, n, 1]
    mask = (torch.arange(n) < torch.tensor(lengths)[:, None]).float()
    adv = adv * mask
    rollout = SimpleNamespace(prompts=prompt_ids(bits), responses=responses, mask=mask)
    adaptive_gradient(ResponseLogits(model, answer_ids(k)), rollout, adv)

    W1, W2 = model.W1.detach().double(), model.W2.detach().double()
    want1, want2 = torch.zeros_like(W1), torch.zeros_like(W2)
    for r in range(b):
        s = 2.0 * bits[r].double() - 1
        seq1, seq2, adv1, adv2 = (torch.zeros_like(W1), torch.zeros_like(W2), torch.zeros_like(W1), torch.zeros_like(W2))
        prev = k
        for i in range(lengths[r]):
            e_minus_p = torch.nn.functional.one_hot(responses[r, i], k).double() - torch.softmax(W1 @ s + W2[:, prev], 0)
            seq1 += torch.outer(e_minus_p, s)
            seq2[:, prev] += e_minus_p
            adv1 += adv[r, i] * torch.outer(e_minus_p, s)
            adv2[:, prev] += adv[r, i] * e_minus_p
            prev = int(responses[r, i])
        eta = 1.0 / (4.0 + 2.0 * (seq1.pow(2).sum() + seq2.pow(2).sum()))
        want1 -= eta * adv1
        want2 -= eta * adv2
    torch.testing.assert_close(model.W1.grad.double(), want1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.W2.grad.double(), want2, atol=1e-6, rtol=1e-5)


def linear_policy(k: int, d: int, seed: int | None) -> LinearPolicyLM:
    """The log-linear policy, zero weights (uniform) or N(0, 1) ones."""
    model = LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k)))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.W1.copy_(torch.randn(k, d, generator=g))
            model.W2.copy_(torch.randn(k, k + 1, generator=g))
    return model


def test_adaptive_step_gives_each_response_the_theorys_step_by_hand():
    """k = 2, d = 1, N = 1 from the uniform policy: for y = 0, ∇_W1 log p = (e_0 - ½)s = ±(½, -½), ∇_W2 (start column)
    = (½, -½), so ‖∇‖² = 1 and η = 1/6 for both responses. Advantages 1 (s = +1) and ½ (s = -1): the batch's update
    is the sum of the two batch-1 updates, each taken from the same (zero) weights."""
    def step(rows: list[int]) -> LinearPolicyLM:
        model = linear_policy(2, 1, None)
        rollout = SimpleNamespace(prompts=prompt_ids(torch.tensor([[1], [0]])[rows]),
                                  responses=torch.zeros(len(rows), 1, dtype=torch.long), mask=torch.ones(len(rows), 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # posttrain's optimiser for adaptive, at lr 1
        adaptive_gradient(ResponseLogits(model, answer_ids(2)), rollout, torch.tensor([[1.0], [0.5]])[rows])
        optimizer.step()
        return model

    start_column = lambda v: torch.tensor([[0.0, 0.0, v], [0.0, 0.0, -v]])  # noqa: E731
    first, second, both = step([0]), step([1]), step([0, 1])
    torch.testing.assert_close(first.W1.detach(), torch.tensor([[1 / 12], [-1 / 12]]))  # (1/6)·1·(½, -½)
    torch.testing.assert_close(first.W2.detach(), start_column(1 / 12))
    torch.testing.assert_close(second.W1.detach(), torch.tensor([[-1 / 24], [1 / 24]]))  # (1/6)·½·(-½, ½)
    torch.testing.assert_close(second.W2.detach(), start_column(1 / 24))
    torch.testing.assert_close(both.W1.detach(), torch.tensor([[1 / 24], [-1 / 24]]))
    torch.testing.assert_close(both.W2.detach(), start_column(1 / 8))


def test_kl_term_is_the_sequence_kl_on_policy_only():
    """k = 3, N = 3, one prompt, all 27 responses: the KL term of a response y is Σ_i KL(p(·|x, y_<i) ‖ q0(·|x, y_<i)).
    Weighted by p(y) (on-policy sampling) it is KL(p‖q0) exactly; weighted by the uniform behaviour it is not. Its
    gradient, weighted by p(y), is ∇KL(p‖q0) less the score term Σ_y p(y) Σ_i KL_i(y_<i) ∇ log p(y_<i)."""
    k, d, n = 3, 4, 3
    policy, base = linear_policy(k, d, 0), linear_policy(k, d, 1)
    responses = torch.cartesian_prod(*[torch.arange(k)] * n)
    prompts = prompt_ids(torch.tensor([[1, 0, 0, 1]])).expand(len(responses), -1)
    learner, params = ResponseLogits(policy, answer_ids(k)), list(policy.parameters())

    def token_logp(model):
        logp = torch.log_softmax(answer_logits(model, prompts, responses, k).double(), -1)
        return logp, logp.gather(-1, responses[..., None]).squeeze(-1)

    logp, tok = token_logp(policy)
    base_logp, base_tok = token_logp(base)
    p_y = tok.sum(-1).exp()
    assert p_y.sum().item() == pytest.approx(1.0, abs=1e-12)
    exact = (p_y * (tok.sum(-1) - base_tok.sum(-1))).sum()  # Σ_y p(y) log p(y)/q0(y)
    exact_grad = torch.autograd.grad(exact, params, retain_graph=True)

    terms, term_grads = [], [torch.zeros_like(w) for w in params]
    for y in range(len(responses)):
        row = SimpleNamespace(prompts=prompts[y : y + 1], responses=responses[y : y + 1], mask=torch.ones(1, n))
        loss, stats = policy_gradient_loss(learner, row, torch.zeros(1, n), k, base, kl_coef=1.0)
        terms.append(stats["kl"].item())
        for acc, g in zip(term_grads, torch.autograd.grad(loss, params)):
            acc += p_y[y].item() * g
    terms = torch.tensor(terms, dtype=torch.float64)
    on_policy, uniform = (p_y.detach() * terms).sum().item(), terms.mean().item()
    assert exact.item() > 0.1
    assert on_policy == pytest.approx(exact.item(), rel=1e-5)
    assert abs(uniform - exact.item()) > 0.1 * exact.item()

    kl_pos = (logp.exp() * (logp - base_logp)).sum(-1).detach()  # (27, N): KL_i at each response's prefix y_<i
    prefix_logp = torch.cat([torch.zeros(len(responses), 1, dtype=tok.dtype), tok.cumsum(-1)[:, :-1]], -1)
    score = torch.autograd.grad((p_y.detach()[:, None] * kl_pos * prefix_logp).sum(), params)
    for got, s_, want in zip(term_grads, score, exact_grad):
        torch.testing.assert_close(got + s_, want, atol=1e-5, rtol=1e-4)
    assert max((got - want).abs().max().item() for got, want in zip(term_grads, exact_grad)) > 0.1


if __name__ == "__main__":  # under torchrun, for test_data_parallel_gradient_is_the_full_batch_gradient
    data_parallel_worker(sys.argv[1])
