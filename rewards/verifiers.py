"""Built-in reward models: exact outcome and process verifiers, and noisy versions of both."""

from __future__ import annotations

import inspect

import torch

from rewards.base import RewardModel, correct_prefixes


class OutcomeVerifier(RewardModel):
    """``r(x, y) = 1[y = y*(x)]``: one query per response."""

    granularity = "outcome"

    def __init__(self, signed: bool = False, flip_prob: float = 0.0, seed: int = 0):
        super().__init__(signed)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = flip_prob
        self.generator = torch.Generator().manual_seed(seed)

    def _noise(self, ok: torch.Tensor) -> torch.Tensor:
        """Flip each verdict independently with probability ``flip_prob``."""
        if self.flip_prob == 0.0:
            return ok
        flips = torch.rand(ok.shape, generator=self.generator) < self.flip_prob
        return ok ^ flips.to(ok.device)

    def verdicts(self, prompts, responses, columns):
        ok = correct_prefixes(responses, columns["target"])[:, -1:]
        return self._noise(ok), responses.shape[0]

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


class ProcessVerifier(OutcomeVerifier):
    """``r(x, y_1:i) = 1[y_1:i = y*_1:i]`` for every prefix: one query per prefix checked.

    With ``stop_at_first_error`` the verifier checks prefixes in order and stops at the first rejected
    one (every longer prefix is then wrong too), so a response costs ``min(first error + 1, L)``
    queries; otherwise every prefix is checked (L queries).
    """

    granularity = "process"

    def __init__(self, signed: bool = False, flip_prob: float = 0.0, seed: int = 0, stop_at_first_error: bool = True):
        super().__init__(signed, flip_prob, seed)
        self.stop_at_first_error = stop_at_first_error

    def check_last(self, prompts, prefixes, columns):
        ok = correct_prefixes(prefixes, columns["target"])[:, -1]
        return self._noise(ok), prefixes.shape[0]

    def verdicts(self, prompts, responses, columns):
        B, L = responses.shape
        ok = self._noise(correct_prefixes(responses, columns["target"]))
        if not self.stop_at_first_error:
            return ok, B * L
        accepted = ok.long().cumprod(-1)  # verdicts up to and including the first rejection were queried
        checked = (accepted.sum(-1) + 1).clamp(max=L)
        return accepted.bool(), int(checked.sum())


def noisy(cls):
    """The same verifier with verdicts flipped with probability ``flip_prob`` (default 0.1)."""

    class Noisy(cls):
        def __init__(self, signed: bool = False, flip_prob: float = 0.1, **kwargs):
            super().__init__(signed=signed, flip_prob=flip_prob, **kwargs)

    # its parameters are cls's with the noisy default, so that make_reward can check params against them
    params = inspect.signature(cls.__init__).parameters.values()
    Noisy.__init__.__signature__ = inspect.Signature(
        [p.replace(default=0.1) if p.name == "flip_prob" else p for p in params])
    Noisy.__name__ = Noisy.__qualname__ = f"Noisy{cls.__name__}"
    Noisy.__doc__ = f"{cls.__name__} with each verdict flipped with probability flip_prob."
    return Noisy


NoisyOutcomeVerifier = noisy(OutcomeVerifier)
NoisyProcessVerifier = noisy(ProcessVerifier)
