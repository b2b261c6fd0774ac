"""Reward models, selected by name in the config (``reward.name``) or by import path.

Built in: ``outcome``, ``process``, ``noisy_outcome``, ``noisy_process``. A user's own model is
``package.module:ClassName``: a ``rewards.RewardModel`` subclass (or anything with ``granularity`` and
the same call signature) constructed with ``signed`` and ``reward.params`` as keyword arguments.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

from barrierlab.config import require
from barrierlab.errors import UserError
from rewards.base import RewardModel, RewardOutput, correct_prefixes
from rewards.verifiers import NoisyOutcomeVerifier, NoisyProcessVerifier, OutcomeVerifier, ProcessVerifier

REWARDS: dict[str, type] = {
    "outcome": OutcomeVerifier,
    "process": ProcessVerifier,
    "noisy_outcome": NoisyOutcomeVerifier,
    "noisy_process": NoisyProcessVerifier,
}

__all__ = ["REWARDS", "RewardConfig", "RewardModel", "RewardOutput", "correct_prefixes", "make_reward"]


@dataclass
class RewardConfig:
    name: str = "outcome"
    """Built-in name (outcome, process, noisy_outcome, noisy_process) or 'package.module:ClassName'."""
    signed: bool = False
    """Reward values in {-1, +1} instead of {0, 1}."""
    params: dict = field(default_factory=dict)
    """Keyword arguments of the reward model, e.g. {flip_prob: 0.1} or {stop_at_first_error: false}."""

    def check(self):
        require(self.name != "", "name", "must name a reward: " + ", ".join(REWARDS))


def resolve_class(name: str) -> type:
    available = ", ".join(REWARDS)
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise UserError(f"unknown reward '{name}'; available: {available}, or 'package.module:ClassName'")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"reward '{name}': cannot import module '{module_name}' ({err}); available built-ins: {available}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise UserError(f"reward '{name}': module '{module_name}' has no '{attr}'; available built-ins: {available}")
    if getattr(cls, "granularity", None) not in ("outcome", "process"):
        raise UserError(f"reward '{name}' must define granularity = 'outcome' or 'process'")
    return cls


def make_reward(cfg: RewardConfig) -> RewardModel:
    cls = resolve_class(cfg.name)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    for key in cfg.params:
        if key not in accepted and not takes_any:
            names = [n for n in accepted if n not in ("self", "signed")]
            raise UserError(f"reward.params: '{key}' is not a parameter of {cfg.name}; allowed: {', '.join(names) or 'none'}")
    try:
        return cls(signed=cfg.signed, **cfg.params)
    except (TypeError, ValueError) as err:
        raise UserError(f"reward '{cfg.name}': bad params {cfg.params}: {err}") from None
