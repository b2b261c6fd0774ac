"""The reward-model interface: verdicts per prefix, and the reward queries they cost.

A reward model is called with the batch's prompts, the sampled responses and the prompts' columns: ``target``
(y* as symbols, (B, N)) and, where the prompts have one, ``cluster`` ((B,)), as a TRL reward function gets
completions plus dataset columns (``posttrain.for_trl.RewardFunction`` adapts it to TRL's own signature):

    out = reward(prompts, responses, columns)   # responses: (B, L) symbol indices, L ≤ N
    out.values   # (B, L) float: value of prefix y_1:i (outcome: the response's verdict at every i)
    out.queries  # int: verifier calls charged for this batch

``granularity`` says which: ``"outcome"`` (one verdict per response) or ``"process"`` (one per prefix).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from barrierlab.errors import UserError


@dataclass
class RewardOutput:
    values: torch.Tensor
    """(B, L) reward of each prefix y_1:i; for an outcome reward the response's verdict, repeated."""
    queries: int
    """Verifier calls this batch cost."""


class RewardModel:
    """Base class of reward models; subclasses implement ``verdicts``."""

    granularity: Literal["outcome", "process"] = "outcome"
    label_queries: int | None = None
    """Verifier queries spent before post-training to build this reward (a learned PRM's labels), or None: a run logs
    them as ``train/label_queries`` and every figure adds them to its query axis."""

    def __init__(self, signed: bool = False):
        self.signed = signed

    def check_task(self, task_info: dict) -> None:
        """Refuse, with a one-line UserError, a base (its task.json) whose task this reward cannot score; checked
        before anything is written. A verifier scores any task."""

    def model_calls(self) -> int | None:
        """Calls of a learned reward model so far (``train/prm_calls``, apart from verifier queries), or None."""
        return None

    def verdicts(self, prompts, responses, columns) -> tuple[torch.Tensor, int]:
        """(B, L) bool verdicts and the queries charged. Outcome models return (B, 1)."""
        raise NotImplementedError

    def checked_verdicts(self, prompts, responses, columns) -> tuple[torch.Tensor, int]:
        """``verdicts`` held to its contract, each breach one line: a wrong verdict would otherwise train silently."""
        out, name = self.verdicts(prompts, responses, columns), f"reward {type(self).__name__}: verdicts()"
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
            got = f"({', '.join(type(x).__name__ for x in out)})" if isinstance(out, tuple) else type(out).__name__
            raise UserError(f"{name} returned {got}; it must return (verdicts Tensor, queries int)")
        ok, queries = out
        if not isinstance(queries, numbers.Integral) or isinstance(queries, bool) or queries < 0:
            raise UserError(f"{name} charged {queries!r} reward queries; the count must be an integer ≥ 0")
        outcome = self.granularity == "outcome"
        want = (responses.shape[0], 1 if outcome else responses.shape[1])
        if tuple(ok.shape) != want:  # a (B, 1) process verdict would broadcast over the prefixes unnoticed
            raise UserError(f"{name} returned shape {tuple(ok.shape)}; {self.granularity} "
                            f"rewards return {'(B, 1)' if outcome else '(B, L)'}, {want} here")
        if ok.dtype != torch.bool and not ((ok == 0) | (ok == 1)).all():
            bad = ok[(ok != 0) & (ok != 1)].flatten()[0].item()
            raise UserError(f"{name} returned {bad}; verdicts are true/false (bool, or 0/1)")
        return ok.bool(), int(queries)  # bool: verdicts also select rows (token-wise search)

    def check_last(self, prompts, prefixes, columns) -> tuple[torch.Tensor, int]:
        """Verdict on the longest prefix of each row only, one query per row: what token-wise search asks."""
        ok, _ = self.checked_verdicts(prompts, prefixes, columns)
        return ok[:, -1], prefixes.shape[0]

    def __call__(self, prompts, responses, columns) -> RewardOutput:
        ok, queries = self.checked_verdicts(prompts, responses, columns)
        values = ok.to(torch.float32)
        if self.signed:
            values = 2.0 * values - 1.0
        return RewardOutput(values.expand(responses.shape[0], responses.shape[1]).contiguous(), queries)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def correct_prefixes(responses: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: prefix y_1:i equals y*_1:i."""
    return (responses == target[:, : responses.shape[1]]).long().cumprod(-1).bool()
