"""``learned_prm``: a PRM trained by ``python -m rewards.train_prm``, as a process reward model.

Its verdict on prefix ``y_1:i`` is the PRM's probability that the prefix is correct, above ``threshold``; with
``soft: true`` the reward is that probability itself (2p − 1 when signed). It never asks the verifier: a batch costs
0 verifier queries, and its own calls (one per prefix scored) are counted apart, as ``train/prm_calls``. The verifier
queries its labels cost (``prm.json``) are the run's ``label_queries``, which every figure adds to its query axis.
Under token-wise search (Algorithm 2) a candidate is accepted where the verdict is, soft or not.
"""

from __future__ import annotations

import torch

from barrierlab.errors import UserError
from barrierlab.prm import check_prm_task, load_prm
from rewards.base import RewardModel, RewardOutput


class LearnedPRM(RewardModel):
    """The PRM of the run folder ``run``, its verdicts thresholded at ``threshold`` (or its probability, ``soft``)."""

    granularity = "process"

    def __init__(self, signed: bool = False, run: str = "", threshold: float = 0.5, soft: bool = False):
        super().__init__(signed)
        if run == "":
            raise UserError("reward learned_prm needs params.run, the run folder of a PRM (python -m rewards.train_prm), "
                            "e.g. --reward.params \"{run: runs/prm_exact}\"")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
        self.prm, self.threshold, self.soft = load_prm(run), threshold, soft
        self.label_queries = int(self.prm.info["label_queries"])
        self.calls = 0

    def check_task(self, task_info: dict) -> None:
        check_prm_task(self.prm.info, self.prm.path, task_info)

    def model_calls(self) -> int:
        return self.calls

    def probs(self, prompts, responses) -> torch.Tensor:
        """``(B, L)`` prefix probabilities, each a PRM call."""
        self.calls += responses.numel()
        return self.prm.prefix_probs(prompts, responses)

    def verdicts(self, prompts, responses, columns):
        return self.probs(prompts, responses) > self.threshold, 0

    def check_last(self, prompts, prefixes, columns):
        probs = self.prm.prefix_probs(prompts, prefixes)[:, -1]
        self.calls += prefixes.shape[0]
        return probs > self.threshold, 0

    def __call__(self, prompts, responses, columns) -> RewardOutput:
        if not self.soft:
            return super().__call__(prompts, responses, columns)
        values = self.probs(prompts, responses).float()
        return RewardOutput(2.0 * values - 1.0 if self.signed else values, 0)

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]
