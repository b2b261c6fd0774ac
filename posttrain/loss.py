"""The policy-gradient objective on a rollout: the loss whose gradient is ``-Σ_i A_i ∇ log p(y_i | x, y_<i)``, its
closed form for the linear model, and the theory's adaptive step (per-response gradient norms)."""

from __future__ import annotations

import torch

from barrierlab.models import LinearPolicyLM
from barrierlab.policy import answer_logits


def _entropy(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed entropy of the policy over the unmasked positions."""
    return (-(logp.exp() * logp).sum(-1) * mask).sum()


def policy_gradient_loss(learner, rollout, adv, k, base=None, kl_coef=0.0):
    """``-Σ_i A_i log p(y_i | x, y_<i)`` averaged over responses, plus ``kl_coef`` × the KL term if asked.
    ``learner`` is the (possibly DDP-wrapped) ``ResponseLogits`` of the policy over the k answers.

    The KL term is ``Σ_i KL(p(·|x, y_<i) ‖ q0(·|x, y_<i))``, exact at each position of the sampled responses, averaged
    over them: by the chain rule its expectation is the sequence KL(p‖q0) when p itself samples (on_policy); under
    another behaviour it weighs the prefixes that behaviour visits instead. Its gradient holds the sampled prefixes
    fixed (the usual per-token penalty), so even on-policy it lacks the score term ``Σ_i KL_i ∇ log p(y_<i)`` of ∇KL.

    A response whose advantages are all zero adds nothing to the loss or its gradient (outcome PG with 0/1
    rewards: every failure), so without a KL term only the others go through the graph; the logged entropy
    still covers every response, through a forward without grad."""
    B = adv.shape[0]
    learn = (adv != 0).any(-1) if kl_coef == 0 else torch.ones(B, dtype=torch.bool, device=adv.device)
    learn[0] |= ~learn.any()  # one row at least: under DDP every process must run its backward
    prompts, responses, mask = rollout.prompts[learn], rollout.responses[learn], rollout.mask[learn]
    logp = torch.log_softmax(learner(prompts, responses), -1)
    token_logp = logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    loss = -(adv[learn] * token_logp).sum() / B
    entropy = _entropy(logp.detach(), mask)
    if not learn.all():
        # through the bare module: a DDP forward may broadcast buffers, and the processes' counts must match
        bare = getattr(learner, "module", learner)
        with torch.no_grad():
            rest = ~learn
            rest_logp = torch.log_softmax(bare(rollout.prompts[rest], rollout.responses[rest]), -1)
            entropy = entropy + _entropy(rest_logp, rollout.mask[rest])
    stats = {"entropy": entropy / rollout.mask.sum().clamp_min(1)}
    if kl_coef > 0:
        with torch.no_grad():
            base_logp = torch.log_softmax(answer_logits(base, prompts, responses, k), -1)
        kl = ((logp.exp() * (logp - base_logp)).sum(-1) * mask).sum(-1).mean()
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    return loss, stats


def adaptive_gradient(learner, rollout, adv) -> float:
    """Set ``.grad`` to ``-Σ_b η_b ∇ Σ_i A_bi log p(y_bi)`` with the theory's ``η_b = 1/(4 + 2‖∇ log p(y_b|x_b)‖²)``.

    Summed, not averaged: each response gets the theory's own step, as if it were its own step of batch 1, but all are
    computed at the same parameters and applied at once (not one after another). One backward pair per response
    (per-sample gradient norms): meant for the linear model and small batches.
    """
    params = [p for p in learner.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for b in (adv != 0).any(-1).nonzero().flatten().tolist():  # a response without signal adds η_b · 0
        lp = learner(rollout.prompts[b : b + 1], rollout.responses[b : b + 1]).log_softmax(-1)
        lp = lp.gather(-1, rollout.responses[b : b + 1].unsqueeze(-1)).squeeze(-1)[0] * rollout.mask[b]
        grad_seq = torch.autograd.grad(lp.sum(), params, retain_graph=True, allow_unused=True)
        grad_adv = torch.autograd.grad((adv[b] * lp).sum(), params, allow_unused=True)
        sq = sum(float(g.pow(2).sum()) for g in grad_seq if g is not None)
        eta = 1.0 / (4.0 + 2.0 * sq)
        for t, g in zip(total, grad_adv):
            if g is not None:
                t.add_(g, alpha=eta)
    for p, t in zip(params, total):
        p.grad = -t
    return sum(float(t.pow(2).sum()) for t in total) ** 0.5


@torch.no_grad()
def linear_policy_gradient(model: LinearPolicyLM, rollout, adv) -> tuple[torch.Tensor, dict]:
    """Set ``.grad`` of the linear model to the gradient of ``policy_gradient_loss`` (without KL) in closed form; return
    (loss, stats) as it does.

    A step's logits are ``a_b + W2[:, j]`` (``a_b = W1 s(x_b)``, j the previous symbol): they depend on the response only
    through j, so with ``P_bj`` the policy after j on prompt b, ``c_bj`` the advantages of the steps taken after j and
    ``C_bjy`` those of the steps taken after j to y, the gradient of the loss on the logits of (b, j) is
    ``-(C_bj - c_bj P_bj)/B``. Summed over j it multiplies ``s(x_b)`` into W1's gradient; summed over b it is W2's
    column j. Neither needs ``C`` itself (its sums over j and over b are scatters of the B N advantages), and ``P`` is
    needed only on the rows (b, j) that some step visits. The loss, ``(Σ_bj c_bj logsumexp_bj - Σ_by a_by Σ_j C_bjy -
    Σ_jy W2[y, j] Σ_b C_bjy) / B``, comes from the same sums: no prompt positions, no graph, no backward, and nothing
    that grows with N but the scatters."""
    responses, B, k = rollout.responses, adv.shape[0], model.config.k
    adv, mask = adv.float(), rollout.mask.float()
    prev = torch.cat([torch.full_like(responses[:, :1], k), responses[:, :-1]], 1)
    step_row = torch.add(prev, torch.arange(B, device=adv.device).unsqueeze(1) * (k + 1)).flatten()  # (b, j) of each
    flat = adv.double().flatten()  # sums of advantages in float64: the loss multiplies them by large logits
    # per row (b, j): the advantages c_bj and the number of steps taken from it
    c = torch.zeros(B * (k + 1), dtype=torch.float64, device=adv.device).index_add_(0, step_row, flat)
    visits = torch.zeros(B * (k + 1), device=adv.device).index_add_(0, step_row, mask.flatten())
    rows = visits.nonzero().squeeze(1)  # the R visited rows (a masked step has advantage 0: advantages() masks)
    c, visits = c[rows], visits[rows]
    b, j = rows // (k + 1), rows % (k + 1)
    s = model.features(rollout.prompts).float()
    a, W2 = s @ model.W1.T.float(), model.W2.float()
    logits = a[b] + W2.T[j]  # (R, k)
    lse = torch.logsumexp(logits, -1)
    p = torch.exp(logits - lse.unsqueeze(1))
    cp = c.float().unsqueeze(1) * p  # c_bj P_bj
    by_symbol = torch.zeros(B, k, dtype=torch.float64, device=adv.device).scatter_add_(  # Σ_j C_bj
        1, responses, flat.view(B, -1))
    by_cell = torch.zeros((k + 1) * k, dtype=torch.float64, device=adv.device).index_add_(  # Σ_b C_bj
        0, torch.add(responses, prev, alpha=k).flatten(), flat).view(k + 1, k)
    g1 = torch.zeros(B, k, device=adv.device).index_add_(0, b, cp) - by_symbol.float()
    model.W1.grad = (g1.T @ s / B).to(model.W1.dtype)
    g2 = torch.zeros(k + 1, k, device=adv.device).index_add_(0, j, cp) - by_cell.float()
    model.W2.grad = (g2.T / B).to(model.W2.dtype)
    # three sums of large terms that cancel to a small loss, in float64
    loss = ((c @ lse.double()) - (a.double() * by_symbol).sum() - (W2.T.double() * by_cell).sum()) / B
    row_entropy = lse - (p * logits).sum(-1)  # -Σ_y P log P of each visited row
    return loss, {"entropy": (visits * row_entropy).sum() / mask.sum().clamp_min(1)}
