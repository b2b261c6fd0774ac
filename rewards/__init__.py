"""Reward models, selected by name in the config (``reward.name``) or by import path.

Built in: ``outcome``, ``process``, ``noisy_outcome``, ``noisy_process`` and ``learned_prm`` (a PRM trained by
``python -m rewards.train_prm``, ``params: {run: <its folder>}``). A user's own model is
``package.module:ClassName`` (importable from the working directory or ``PYTHONPATH``): a ``rewards.RewardModel``
subclass that sets ``granularity`` and implements ``verdicts``, constructed with ``signed`` and ``reward.params`` as
keyword arguments.

``RewardConfig`` is defined here and imports no torch (a stage checks its config before it loads torch); the models
(``rewards.base``, ``rewards.verifiers``) and ``make_reward`` (``rewards.registry``) are imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from barrierlab.config import require

BUILT_IN = ("outcome", "process", "noisy_outcome", "noisy_process", "learned_prm")
"""The built-in reward models' names (``rewards.registry.REWARDS``)."""

_LAZY = {"RewardModel": "rewards.base", "RewardOutput": "rewards.base", "correct_prefixes": "rewards.base",
         "REWARDS": "rewards.registry", "granularity_of": "rewards.registry", "make_reward": "rewards.registry",
         "resolve_class": "rewards.registry"}

__all__ = ["BUILT_IN", "RewardConfig", *_LAZY]


def unknown_reward(name: str) -> str:
    return f"unknown reward '{name}'; available: {', '.join(BUILT_IN)}, or 'package.module:ClassName'"


@dataclass
class RewardConfig:
    name: str = "outcome"
    """Built-in name (outcome, process, noisy_outcome, noisy_process, learned_prm) or 'package.module:ClassName'."""
    signed: bool = False
    """Reward values in {-1, +1} instead of {0, 1}."""
    params: dict = field(default_factory=dict)
    """Keyword arguments of the reward model, e.g. {flip_prob: 0.1}, {stop_at_first_error: false} or (learned_prm)
    {run: runs/prm_exact, threshold: 0.5, soft: false}; each must have its default's type. A noisy verifier's noise
    seed defaults to one derived from run.seed (each process adds 1000003 × its rank)."""

    def check(self):
        require(self.name in BUILT_IN or ":" in self.name, "name", unknown_reward(self.name))


def __getattr__(name: str):
    """The torch-backed names, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'rewards' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)
