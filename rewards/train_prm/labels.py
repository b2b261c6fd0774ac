"""The three label sources of a PRM, each charging the true verifier's queries it spends.

- ``exact``: each response's prefixes checked by the process verifier (``rewards.verifiers.ProcessVerifier``,
  stopping at the first wrong prefix: a response costs min(first error + 1, N) queries, y* itself N).
- ``monte_carlo`` (Math-Shepherd): prefix ``y_1:i`` (i < N) is completed M times from the base and each completion
  asked of the outcome verifier; hard label: any success, soft: their share. The whole response is its own
  completion: one query. A response costs (N − 1)·M + 1.
- ``implicit`` (PRIME): the outcome verifier's verdict on each response, one query; labels are ``(R, 1)``.

Responses are labelled in order while the budget has room for the most one can cost, so the charge never exceeds
``labels.query_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from barrierlab.policy import sample
from barrierlab.tokenizer import ANSWER0, prompt_ids
from rewards.train_prm.config import LabelConfig
from rewards.verifiers import OutcomeVerifier, ProcessVerifier


@dataclass
class Labels:
    prompts: torch.Tensor
    """(R, P) prompt token ids."""
    responses: torch.Tensor
    """(R, N) labelled responses (symbols)."""
    targets: torch.Tensor
    """(R, N) y* of each prompt (for measurement only: the labels never read it but through a verifier)."""
    clusters: torch.Tensor
    """(R,) cluster of each prompt."""
    labels: torch.Tensor
    """(R, N) prefix labels in [0, 1] (exact, monte_carlo), or (R, 1) outcome labels (implicit)."""
    queries: int
    """Verifier queries the labels cost."""

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("prompts", "responses", "targets", "clusters", "labels", "queries")}


def most_per_response(cfg: LabelConfig, N: int) -> int:
    """The most verifier queries one response's labels can cost."""
    return {"exact": N, "monte_carlo": (N - 1) * cfg.completions + 1, "implicit": 1}[cfg.source]


def draw_prompts(task, n: int, clusters: list[int] | None, generator: torch.Generator):
    """``n`` fresh prompts of the task (of ``clusters`` only, if given): (token ids, y*, cluster)."""
    chosen = None
    if clusters is not None:
        chosen = torch.tensor(clusters)[torch.randint(len(clusters), (n,), generator=generator)]
    bits, cluster = task.sample_prompts(n, generator, chosen)
    return prompt_ids(bits), task.targets(bits, cluster), cluster


def exact_labels(prompts, responses, targets, budget_left: float) -> tuple[torch.Tensor, int, int]:
    """Each response checked prefix by prefix, in order, while the budget has room for N more queries: (labels of
    the rows labelled, rows labelled, queries)."""
    verifier, N = ProcessVerifier(stop_at_first_error=True), responses.shape[1]
    rows, spent = [], 0
    for i in range(responses.shape[0]):
        if budget_left - spent < N:
            break
        ok, q = verifier.verdicts(prompts[i : i + 1], responses[i : i + 1], {"target": targets[i : i + 1]})
        rows.append(ok.float())
        spent += q
    return (torch.cat(rows) if rows else responses[:0].float()), len(rows), spent


def monte_carlo_labels(base, prompts, responses, targets, M: int, k: int, soft: bool,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Math-Shepherd labels of every prefix of ``responses`` from M completions by ``base``: (labels, queries)."""
    verifier, (R, N) = OutcomeVerifier(), responses.shape
    labels, queries = torch.empty(R, N), 0
    wide_targets = targets.repeat_interleave(M, 0)
    for i in range(1, N):
        prefix = torch.cat([prompts, responses[:, :i] + ANSWER0], 1).repeat_interleave(M, 0)
        completed = torch.cat([responses[:, :i].repeat_interleave(M, 0), sample(base, prefix, N - i, k, generator=generator)], 1)
        ok, q = verifier.verdicts(prefix, completed, {"target": wide_targets})
        success = ok.view(R, M).float()
        labels[:, i - 1] = success.mean(-1) if soft else success.amax(-1)
        queries += q
    ok, q = verifier.verdicts(prompts, responses, {"target": targets})
    labels[:, N - 1] = ok.float().squeeze(-1)
    return labels, queries + q


@torch.no_grad()
def make_labels(cfg: LabelConfig, base, task, generator: torch.Generator) -> Labels:
    """Label responses drawn from ``base`` (and y*, under ``exact``) on fresh prompts until ``cfg.responses`` are
    labelled or the budget has no room for another."""
    N, k = task.N, task.k
    most = most_per_response(cfg, N)
    budget = float("inf") if cfg.query_budget is None else cfg.query_budget
    parts, count, queries = [], 0, 0
    while count < cfg.responses and budget - queries >= most:
        take = min(cfg.batch_size, cfg.responses - count)
        if cfg.source != "exact" and cfg.query_budget is not None:
            take = min(take, (cfg.query_budget - queries) // most)
        prompts, targets, clusters = draw_prompts(task, take, cfg.clusters, generator)
        responses = sample(base, prompts, N, k, generator=generator)
        if cfg.source == "exact":
            star = torch.rand(take, generator=generator) < cfg.ystar_share
            responses[star] = targets[star]
            labels, take, q = exact_labels(prompts, responses, targets, budget - queries)
        elif cfg.source == "monte_carlo":
            labels, q = monte_carlo_labels(base, prompts, responses, targets, cfg.completions, k, cfg.soft, generator)
        else:
            ok, q = OutcomeVerifier().verdicts(prompts, responses, {"target": targets})
            labels = ok.float()
        parts.append((prompts[:take], responses[:take], targets[:take], clusters[:take], labels))
        count, queries = count + take, queries + q
    columns = [torch.cat(column) for column in zip(*parts, strict=True)]
    return Labels(*columns, queries=queries)
