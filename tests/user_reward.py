"""Users' own reward models, selected in tests as ``tests.user_reward:ParityReward`` (and the others here)."""


import torch

from rewards import RewardModel


class ParityReward(RewardModel):
    """Outcome reward 1 when the response's symbols sum to an even number (ignores the target)."""

    granularity = "outcome"

    def __init__(self, signed: bool = False, modulus: int = 2):
        super().__init__(signed)
        self.modulus = modulus

    def verdicts(self, prompts, responses, columns):
        return (responses.sum(-1, keepdim=True) % self.modulus == 0), responses.shape[0]


class KeywordReward(ParityReward):
    """A reward that keeps whatever keywords it is given (its own **opts, not passed to a parent)."""

    def __init__(self, signed: bool = False, seed=None, **opts):
        super().__init__(signed)
        self.seed, self.opts = seed, opts


class NotAReward:
    granularity = "outcome"


class BadGranularity(ParityReward):
    granularity = "token"


class NoVerdicts(RewardModel):
    pass


class TwoArgVerdicts(RewardModel):
    def verdicts(self, responses):
        return responses[:, :1] >= 0, responses.shape[0]


class NaNReward(RewardModel):
    def verdicts(self, prompts, responses, columns):
        return torch.full((responses.shape[0], 1), float("nan")), responses.shape[0]
