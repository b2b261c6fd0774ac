"""Discovery bookkeeping: the reward queries a run had spent when it first sampled y*, and each correct prefix.

Under 0/1 outcome rewards nothing is learnt before the first fully correct response, so for an off-support prompt
this waiting time (geometric, mean about 1/α) is where the barrier lives; what follows it is learning
(science.md: discovery queries). Correctness is the truth (y* itself), not a possibly noisy verifier's verdict.
"""

from __future__ import annotations

import math

import torch

from rewards.base import correct_prefixes


class Discovery:
    """First-success queries of one run: ``success`` for the whole response y*, ``prefix[i]`` for y*_1:i+1.

    A batch's rows are charged in row order when each cost one query (an outcome verifier on one response per row),
    so the count is exact to the query; otherwise (per-prefix charges, searches) to the step: the queries spent by
    the end of the batch that found it."""

    def __init__(self, N: int):
        self.success: int | None = None
        self.prefix: list[int | None] = [None] * N
        self.new: dict = {}  # metrics found since the last ``pop_new``

    def update(self, responses: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, before: int,
               spent: int, one_per_row: bool) -> None:
        """Record a batch scored after ``before`` queries at a cost of ``spent``; ``mask`` (B, N) marks the positions
        that exist (a token-wise search may stop early); ``one_per_row``: row r was the (r+1)-th query."""
        if self.success is not None:  # every prefix of y* has been seen by then
            return
        correct = correct_prefixes(responses, target)
        if mask is not None:
            correct &= mask.bool()
        seen = correct.any(0)
        if not seen.any():
            return
        first_row = torch.where(seen, correct.float().argmax(0), 0).tolist()  # argmax: the first true row
        self._record([q if q is not None or not hit else before + (row + 1 if one_per_row else spent)
                      for q, hit, row in zip(self.prefix, seen.tolist(), first_row)])

    def sync(self, reduce_min) -> None:
        """Take the earliest discovery of every process (``reduce_min``: an elementwise minimum over processes)."""
        found = reduce_min(torch.tensor([math.inf if q is None else q for q in self.prefix], dtype=torch.float64))
        self._record([None if math.isinf(q) else int(q) for q in found.tolist()])

    def _record(self, prefix: list[int | None]) -> None:
        """Take ``prefix`` as the discoveries so far; what changed is logged at the current step."""
        if prefix == self.prefix:
            return
        self.prefix = prefix
        self.new["train/first_prefix_queries"] = list(prefix)
        if prefix[-1] is not None:
            self.success = self.new["train/first_success_queries"] = prefix[-1]

    def pop_new(self) -> dict:
        """The discovery metrics found since the last call (to log at the current step), then forgotten."""
        new, self.new = self.new, {}
        return new

    def done_metrics(self) -> dict:
        return {"done/first_success_queries": self.success, "done/first_prefix_queries": list(self.prefix)}

    def state_dict(self) -> dict:
        return {"success": self.success, "prefix": list(self.prefix)}

    def load_state_dict(self, state: dict) -> None:
        self.success, self.prefix = state["success"], list(state["prefix"])
