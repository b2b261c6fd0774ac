"""Behaviour policies: what samples the responses that the policy gradient then learns from.

- ``on_policy``: q_t = p_t.
- ``uniform``: every response uniform over k^N.
- ``mixture``: each response from the frozen base q0 with probability ``mixture_weight``, else uniform
  (the theory's ½ q0 + ½ Unif gives every response probability ≥ ½ k^-N).
- ``best_of_m`` (the paper's Algorithm 1): sample from p_t; where it fails, draw up to m responses from
  the mixture and update on the first correct one. Every try is charged (one outcome query each).
- ``token_best_of_m`` (Algorithm 2): walk along the verified prefix; at each position draw up to m candidate
  tokens from the token-level mixture of q0 and uniform until the prefix verifier accepts one. Every
  candidate checked is charged; a position that exhausts m candidates ends that response there.
- ``teacher_forcing``: the response is y* itself (the supervised control), still scored by the reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from barrierlab.policy import answer_logits, sample
from posttrain.config import Behaviour

# Candidates drawn per row at once while searching: bounds memory, changes nothing in distribution
# or in the queries charged (charging stops at the first accepted candidate).
_CANDIDATE_BUDGET = 8192


@dataclass
class Rollout:
    prompts: torch.Tensor
    """(B, P) prompt token ids."""
    responses: torch.Tensor
    """(B, N) symbols the policy gradient learns from."""
    rewards: torch.Tensor
    """(B, N) per-prefix rewards (outcome: the verdict at every position)."""
    mask: torch.Tensor
    """(B, N) 1 where the position is part of the response (token_best_of_m may stop early)."""
    success: torch.Tensor
    """(B,) the response is exactly y*."""
    queries: int
    """Reward queries spent to produce this rollout (all tries included)."""
    one_per_row: bool = False
    """Row r was the (r+1)-th reward query: one outcome verdict per row, nothing else charged (single draws)."""


@dataclass
class Sampler:
    """What a behaviour policy needs: the learner, the frozen base, the reward and the randomness."""

    policy: torch.nn.Module
    base: torch.nn.Module | None
    reward: object
    k: int
    N: int
    temperature: float
    mixture_weight: float
    m: int
    generator: torch.Generator

    def uniform(self, B: int, device) -> torch.Tensor:
        return torch.randint(0, self.k, (B, self.N), generator=self.generator, device=device)

    def mixture(self, prompts: torch.Tensor) -> torch.Tensor:
        """Responses from ``w q0 + (1 - w) Unif``, choosing the component per response."""
        B = prompts.shape[0]
        out = self.uniform(B, prompts.device)
        from_base = torch.rand(B, generator=self.generator, device=prompts.device) < self.mixture_weight
        if from_base.any():
            out[from_base] = sample(self.base, prompts[from_base], self.N, self.k,
                                    temperature=1.0, generator=self.generator)
        return out


def _accepted(values: torch.Tensor) -> torch.Tensor:
    return values[:, -1] > 0


def first_accepted(candidates: torch.Tensor, verify) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check candidates ``(S, c, L)`` one at a time per row, as a sequential search would, stopping a row
    at its first accepted one. ``verify(rows, cands)`` → (bool verdicts, queries). Returns
    (found (S,), index of the first accepted (S,), queries): only checked candidates are charged, because
    only they were sent to the verifier."""
    S, c = candidates.shape[:2]
    found = torch.zeros(S, dtype=torch.bool, device=candidates.device)
    first = torch.zeros(S, dtype=torch.long, device=candidates.device)
    queries = 0
    for t in range(c):
        rows = (~found).nonzero().squeeze(-1)
        if not rows.numel():
            break
        ok, q = verify(rows, candidates[rows, t])
        queries += q
        hit = rows[ok]
        found[hit], first[hit] = True, t
    return found, first, queries


class StepBatches:
    """Each step's prompts (G rows each) and, under on-policy sampling, their responses.

    While the policy is at rest (the steps since these responses were drawn left the weights as they were: no signal
    before the first one, or none since the last one under an optimiser whose zero-gradient step is the identity),
    several steps' responses are sampled in one batched call: they are distributed exactly as step-by-step sampling
    would draw them, and a large batch samples several times faster than a small one. Steps left over when a signal
    arrives are dropped: never scored, so never charged. The first rest draws ``ahead`` steps at once; a rest after a
    signal starts at one step and doubles, so the learning phase, where signals come every few steps, wastes little."""

    def __init__(self, behaviour: Behaviour, sampler: Sampler, source, prompts_per_step: int, G: int, device,
                 ahead: int):
        self.behaviour, self.sampler, self.source = behaviour, sampler, source
        self.rows, self.G, self.device = prompts_per_step * G, G, device
        self.ahead = ahead if behaviour == "on_policy" else 1  # the others' samples are drawn by collect
        self.run = self.ahead  # steps the next draw at rest takes
        self.pool: dict[str, torch.Tensor] = {}  # prompts, responses and columns of the steps drawn ahead

    def next(self, at_rest: bool) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """(prompts, columns, responses or None) of the next step; ``at_rest``: the policy has not moved since the
        pool was drawn."""
        if not at_rest:
            self.pool, self.run = {}, 1  # any left were drawn from a policy that has moved since
        if not self.pool:
            steps = min(self.run, self.ahead) if at_rest else 1
            self.run = min(2 * self.run, self.ahead) if at_rest else self.run
            prompts, columns = self.source.draw(steps * self.rows // self.G)
            self.pool = {key: v.repeat_interleave(self.G, 0).to(self.device)
                         for key, v in {"prompts": prompts, **columns}.items()}
            if self.behaviour == "on_policy":
                s = self.sampler
                self.pool["responses"] = sample(s.policy, self.pool["prompts"], s.N, s.k, temperature=s.temperature,
                                                generator=s.generator)
        step = {key: v[: self.rows] for key, v in self.pool.items()}
        self.pool = {key: v[self.rows :] for key, v in self.pool.items()} if self.pool["prompts"].shape[0] > self.rows else {}
        prompts, responses = step.pop("prompts"), step.pop("responses", None)
        return prompts, step, responses

    def state_dict(self) -> dict:
        return {"run": self.run, "pool": {key: v.cpu() for key, v in self.pool.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.run = state["run"]
        self.pool = {key: v.to(self.device) for key, v in state["pool"].items()}


def collect(behaviour: Behaviour, s: Sampler, prompts: torch.Tensor, columns: dict,
            responses: torch.Tensor | None = None) -> Rollout:
    """Sample (unless on-policy ``responses`` come drawn already), score and, for the searches, explore."""
    if behaviour == "token_best_of_m":
        return _token_best_of_m(s, prompts, columns)
    if responses is None:
        responses = _draw(behaviour, s, prompts, columns)
    out = s.reward(prompts, responses, columns)
    rewards, queries = out.values, out.queries
    if behaviour == "best_of_m":
        responses, rewards, queries = _best_of_m(s, prompts, columns, responses, rewards, queries)
    success = (responses == columns["target"]).all(-1)
    one_per_row = behaviour != "best_of_m" and s.reward.granularity == "outcome" and queries == prompts.shape[0]
    return Rollout(prompts, responses, rewards, torch.ones_like(rewards), success, queries, one_per_row)


def _draw(behaviour: Behaviour, s: Sampler, prompts: torch.Tensor, columns: dict) -> torch.Tensor:
    """One response per prompt from the behaviour policy (the searches' first draw)."""
    if behaviour == "on_policy" or behaviour == "best_of_m":
        return sample(s.policy, prompts, s.N, s.k, temperature=s.temperature, generator=s.generator)
    if behaviour == "uniform":
        return s.uniform(prompts.shape[0], prompts.device)
    if behaviour == "mixture":
        return s.mixture(prompts)
    if behaviour == "teacher_forcing":
        return columns["target"].clone()
    raise ValueError(f"unknown behaviour '{behaviour}'")


def _chunk(searching: int, remaining: int) -> int:
    """Candidates drawn per searching row at once: drawing in bulk is fast; checking stays sequential."""
    return max(1, min(remaining, _CANDIDATE_BUDGET // max(1, searching)))


def _best_of_m(s: Sampler, prompts, columns, responses, rewards, queries):
    """Algorithm 1: replace each failed p_t sample by the first correct of up to m mixture draws."""
    searching = (~_accepted(rewards)).nonzero().squeeze(-1)
    tries = 0
    while searching.numel() and tries < s.m:
        c = _chunk(searching.numel(), s.m - tries)
        cand = s.mixture(prompts[searching].repeat_interleave(c, 0)).view(searching.numel(), c, s.N)

        def verify(rows, cands, searching=searching):  # bound now: called before the loop moves on
            at = searching[rows]
            out = s.reward(prompts[at], cands, {key: v[at] for key, v in columns.items()})
            return _accepted(out.values), out.queries

        found, first, q = first_accepted(cand, verify)
        queries += q
        hit = searching[found]
        responses[hit] = cand[found, first[found]]
        rewards[hit] = 1.0  # an accepted outcome verdict, at every position
        searching = searching[~found]
        tries += c
    return responses, rewards, queries


@torch.no_grad()
def _token_best_of_m(s: Sampler, prompts, columns) -> Rollout:
    """Algorithm 2: token-wise search along the verified prefix with the token-level base/uniform mixture."""
    B, device, k, N = prompts.shape[0], prompts.device, s.k, s.N
    good, bad = 1.0, (-1.0 if getattr(s.reward, "signed", False) else 0.0)
    responses = torch.zeros(B, N, dtype=torch.long, device=device)
    rewards = torch.zeros(B, N, device=device)
    mask = torch.zeros(B, N, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    queries = 0
    for i in range(N):
        live = alive.nonzero().squeeze(-1)
        if not live.numel():
            break
        # the token-level mixture w q0(. | x, y*_<i) + (1 - w) Unif after the verified prefix (one forward)
        probs = torch.full((live.numel(), k), 1.0 / k, device=device)
        if s.base is not None and s.mixture_weight > 0:
            prefix = torch.cat([responses[live, :i], torch.zeros_like(live)[:, None]], 1)
            q0 = torch.softmax(answer_logits(s.base, prompts[live], prefix, k)[:, i], -1)
            probs = s.mixture_weight * q0 + (1 - s.mixture_weight) * probs
        searching = torch.arange(live.numel(), device=device)
        tries = 0
        while searching.numel() and tries < s.m:
            c = _chunk(searching.numel(), s.m - tries)
            cand = torch.multinomial(probs[searching], c, replacement=True, generator=s.generator)

            def verify(rows, tokens, live=live, searching=searching, i=i):  # bound now, called right away
                at = live[searching[rows]]
                prefixes = torch.cat([responses[at, :i], tokens.view(-1, 1)], 1)
                return s.reward.check_last(prompts[at], prefixes, {key: v[at] for key, v in columns.items()})

            found, first, q = first_accepted(cand.unsqueeze(-1), verify)
            queries += q
            hit = live[searching[found]]
            responses[hit, i] = cand[found, first[found]]
            rewards[hit, i], mask[hit, i] = good, 1.0
            missed = live[searching[~found]]
            responses[missed, i] = cand[~found, -1]  # the last rejected candidate, kept if the search fails
            searching = searching[~found]
            tries += c
        failed = live[searching]
        rewards[failed, i], mask[failed, i] = bad, 1.0
        alive[failed] = False
    # a row the verifier accepted to the end: y* itself, unless a noisy verifier let a wrong token through
    success = alive & (responses == columns["target"]).all(-1)
    return Rollout(prompts, responses, rewards, mask, success, queries)
