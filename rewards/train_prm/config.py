"""Config of the PRM training stage (``python -m rewards.train_prm --config configs/prm/train_exact.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from barrierlab.config import load_config, require
from barrierlab.sections import RunConfig

LabelSource = Literal["exact", "monte_carlo", "implicit"]


@dataclass
class LabelConfig:
    source: LabelSource = "exact"
    """exact: true prefix labels from the process verifier (PRM800K-style); monte_carlo: a prefix is labelled by
    completing it `completions` times from the base and asking the outcome verifier (Math-Shepherd); implicit: only
    the outcome verifier's verdict on each response, for a PRIME implicit PRM."""
    responses: int = 2048
    """Most responses labelled (each a draw from the base, or y* itself: see ystar_share)."""
    query_budget: int | None = None
    """Verifier queries the labels may cost at most: responses are labelled in order while the next one fits (null:
    no budget but `responses`)."""
    clusters: list[int] | None = None
    """Prompts of these clusters only (null: the whole prompt distribution): leave off-support clusters out, or not."""
    ystar_share: float = 0.0
    """exact only: the share of labelled responses that are y* itself (a human's correct solution) rather than a draw
    from the base; each costs its N prefix queries like any other response."""
    completions: int = 4
    """monte_carlo only: completions M per prefix, each one outcome query. A response costs (N − 1)·M + 1 queries (its
    last prefix is the whole response: one query)."""
    soft: bool = False
    """monte_carlo only: label a prefix with the share of its completions that succeed, not whether any does."""
    batch_size: int = 256
    """Responses labelled per batch (only speed depends on it)."""

    def check(self):
        require(self.responses >= 1, "responses", "must be ≥ 1")
        require(self.query_budget is None or self.query_budget >= 1, "query_budget", "must be ≥ 1 or null")
        require(0.0 <= self.ystar_share <= 1.0, "ystar_share", "must be a share in [0, 1]")
        require(self.ystar_share == 0.0 or self.source == "exact", "ystar_share",
                f"y* itself is known only to an exact labeller; set it to 0 for source '{self.source}'")
        require(self.completions >= 1, "completions", "must be ≥ 1")
        require(not self.soft or self.source == "monte_carlo", "soft", "soft labels are monte_carlo's; set it false")
        require(self.batch_size >= 1, "batch_size", "must be ≥ 1")


@dataclass
class PRMModelConfig:
    init: Literal["base", "scratch"] = "base"
    """A classifier's body: a copy of the base's transformer, or freshly initialised (an implicit PRM always starts
    as the base policy, its π_ref)."""
    beta: float = 0.5
    """implicit only: β of the implicit reward β log π_φ / π_ref."""

    def check(self):
        require(self.beta > 0, "beta", "must be > 0")


@dataclass
class PRMTrainConfig:
    steps: int = 300
    """Optimiser steps over the labelled responses."""
    batch_size: int = 128
    """Labelled responses per step (drawn without replacement, epoch by epoch)."""
    lr: float = 1e-3
    """AdamW learning rate (constant, no weight decay)."""
    log_every: int = 10
    """Steps between train/ rows."""
    eval_every: int = 100
    """Steps between quality evaluations on the base's eval prompts (and at the end)."""
    quality_samples: int = 4
    """Responses drawn from the base per eval prompt for the quality evaluation, besides y* itself (not charged:
    measurement uses the truth, as eval does)."""

    def check(self):
        require(self.steps >= 1, "steps", "must be ≥ 1")
        require(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.log_every >= 1, "log_every", "must be ≥ 1")
        require(self.eval_every >= 1, "eval_every", "must be ≥ 1")
        require(self.quality_samples >= 0, "quality_samples", "must be ≥ 0")


@dataclass
class TrainPRMConfig:
    base: str = "runs/base"
    """Pretraining run folder: its model q0 draws the responses (and completes the prefixes) that are labelled."""
    run: RunConfig = field(default_factory=lambda: RunConfig(run_dir="runs/prm", checkpoint_every=100))
    """Run folder, seed, logging and checkpoints."""
    labels: LabelConfig = field(default_factory=LabelConfig)
    """Where the labels come from and what they may cost."""
    model: PRMModelConfig = field(default_factory=PRMModelConfig)
    """The PRM's initialisation (and β of an implicit one)."""
    train: PRMTrainConfig = field(default_factory=PRMTrainConfig)
    """Optimisation and quality evaluation."""


def load_prm_config(argv: list[str]) -> TrainPRMConfig:
    return load_config(TrainPRMConfig, argv, default_config="configs/prm/train_exact.yaml", prog="rewards.train_prm")
